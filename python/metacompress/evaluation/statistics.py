"""How sure the evaluation's numbers are (SPEC section 10, v4): 95 % paired-bootstrap intervals
of every row's accuracy and KL and of each method's difference to MetaCompress, and McNemar's
exact test of the accuracy difference. The statistics are scipy's (`scipy.stats.bootstrap`,
`scipy.stats.binomtest`); this module only says what is resampled and what is compared.

- **The image is the unit.** An image's questions are asked in one conversation about the same
  reduced tokens, so their answers are not independent: the bootstrap draws images with
  replacement, each drawn image bringing all of its questions (and all of its answer tokens
  for the KL). A row's accuracy is then `sum(right) / sum(asked)` over the drawn images and
  its KL `sum(KL) / sum(answer tokens)`: the same ratios as the point estimates.
- **The same resamples for every row.** One `scipy.stats.bootstrap` call with one statistic
  that returns every row's accuracy and KL and every difference at once (a vector statistic),
  so every number is computed on the same drawn images; a difference's interval is that of the
  paired difference, far narrower than two separate intervals would suggest.
- **Percentile intervals** (the 2.5th and 97.5th percentiles of 9999 resamples, seeded): they
  stay defined where a statistic does not vary (the full-token row's KL is 0 on every
  resample; two methods that answer alike differ by exactly 0, so their interval is [0, 0]),
  where BCa's acceleration is undefined.
- **McNemar's exact test** of two rows' accuracy on the same questions: of the questions where
  exactly one of the two is right (the discordant pairs), the share each one wins is 1/2 under
  "equally accurate"; the two-sided binomial test of that share (`scipy.stats.binomtest`).
  It treats questions as independent (the bootstrap interval does not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    from scipy import stats
except ImportError as error:   # an install without the evaluation's extra
    raise ImportError('the evaluation\'s statistics need scipy: pip install "metacompress[eval]"') from error

CONFIDENCE = 0.95
RESAMPLES = 9999
BATCH = 250
"""Resamples evaluated at once (memory: statistics x BATCH x images float64s)."""


@dataclass
class Outcomes:
    """What one row measured, question by question and image by image; every row of a run
    holds the same questions in the same order."""

    right: np.ndarray
    """`(questions,)` bool: the answer equals the reference."""
    image: np.ndarray
    """`(questions,)` int: the image each question is about (0, 1, ...)."""
    kl: np.ndarray
    """`(images,)` the sum of KL(full || row) over the image's answer tokens."""
    kl_tokens: np.ndarray
    """`(images,)` how many answer tokens the image's KL sums over."""
    family: list
    """`(questions,)` each question's family (e.g. "object", "scene"), or None."""


@dataclass
class Interval:
    """A statistic's value on the data and its interval (`low`, `high`; None with fewer than
    two images, where nothing can be resampled)."""

    value: float
    low: float | None
    high: float | None

    def pair(self) -> list | None:
        return None if self.low is None else [self.low, self.high]

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def _ratio(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """`numerators / denominators`, 0 where a denominator is 0 (no answer tokens: no KL)."""
    return np.divide(numerators, denominators, out=np.zeros(np.broadcast(numerators, denominators).shape),
                     where=denominators != 0)


def bootstrap_ratios(numerators: np.ndarray, denominators: np.ndarray, differences=(), *,
                     confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                     seed: int = 0) -> list[Interval]:
    """Intervals of the ratios `sum_i numerators[s, i] / sum_i denominators[s, i]` over images
    `i` (`(statistics, images)` arrays), and of the `differences` `(a, b)`: ratio `a` minus
    ratio `b`; the ratios first, then the differences. One `scipy.stats.bootstrap` over the
    image indices: every ratio and difference is computed on the same resampled images (an
    image's whole column each time it is drawn); percentile intervals, `resamples` draws from
    `seed`."""
    numerators = np.asarray(numerators, dtype=np.float64)
    denominators = np.broadcast_to(np.asarray(denominators, dtype=np.float64), numerators.shape)
    count, images = numerators.shape
    firsts = np.array([a for a, _ in differences], dtype=int)
    seconds = np.array([b for _, b in differences], dtype=int)

    def statistic(drawn, axis=-1):
        # drawn: image indices, (images,) for the data itself or (batch, images) resampled.
        drawn = np.asarray(drawn).astype(int)
        ratios = _ratio(numerators[:, drawn].sum(-1), denominators[:, drawn].sum(-1))
        return np.concatenate([ratios, ratios[firsts] - ratios[seconds]])

    values = statistic(np.arange(images))
    if images < 2:
        return [Interval(float(value), None, None) for value in values]
    result = stats.bootstrap((np.arange(images),), statistic, vectorized=True, paired=True,
                             n_resamples=resamples, batch=BATCH, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return [Interval(float(value), float(lo), float(hi)) for value, lo, hi in zip(values, low, high)]


def mcnemar_p(right: np.ndarray, other: np.ndarray) -> float:
    """McNemar's exact two-sided p-value for the accuracies of two rows on the same questions
    (`right`, `other`: bool per question): the binomial test of the questions only `right`
    gets right among those exactly one of the two gets right, against 1/2 (1 when there are
    none)."""
    right, other = np.asarray(right, dtype=bool), np.asarray(other, dtype=bool)
    wins = int((right & ~other).sum())
    discordant = wins + int((~right & other).sum())
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(wins, discordant, 0.5).pvalue)


def by_family(outcomes: Outcomes) -> dict:
    """Accuracy per question family (`{}` when the questions have no family)."""
    families = {}
    for family, right in zip(outcomes.family, outcomes.right):
        if family is not None:
            asked, correct = families.get(family, (0, 0))
            families[family] = (asked + 1, correct + int(right))
    return {family: correct / asked for family, (asked, correct) in families.items()}


def per_image(outcomes: Outcomes, images: int) -> tuple[np.ndarray, np.ndarray]:
    """`(right, asked)` per image."""
    right = np.bincount(outcomes.image, weights=outcomes.right.astype(np.float64), minlength=images)
    asked = np.bincount(outcomes.image, minlength=images).astype(np.float64)
    return right, asked


def row_statistics(rows: list[Outcomes], baselines: list, *, confidence: float = CONFIDENCE,
                   resamples: int = RESAMPLES, seed: int = 0) -> list[dict]:
    """For each row: `accuracy_ci`, `kl_ci`, `accuracy_by_family` and, where `baselines[r]`
    is the index of another row (MetaCompress at the same keep; None: nothing to compare
    with), `vs_metacompress`: `accuracy_diff`, `accuracy_diff_ci`, `kl_diff`, `kl_diff_ci`
    (this row minus that one) and `mcnemar_p`. Every interval from the same resamples of
    images."""
    if not rows:
        return []
    images = len(rows[0].kl)
    accuracy_counts = [per_image(outcomes, images) for outcomes in rows]
    numerators = [right for right, _ in accuracy_counts] + [outcomes.kl for outcomes in rows]
    denominators = [asked for _, asked in accuracy_counts] + [outcomes.kl_tokens for outcomes in rows]
    count = len(rows)
    pairs = [(row, baseline) for row, baseline in enumerate(baselines) if baseline is not None]
    differences = pairs + [(count + row, count + baseline) for row, baseline in pairs]  # accuracy, KL
    intervals = bootstrap_ratios(np.array(numerators), np.array(denominators), differences,
                                 confidence=confidence, resamples=resamples, seed=seed)
    accuracy, kl = intervals[:count], intervals[count:2 * count]
    compared = [row for row, _ in pairs]
    accuracy_diff = dict(zip(compared, intervals[2 * count:2 * count + len(pairs)]))
    kl_diff = dict(zip(compared, intervals[2 * count + len(pairs):]))
    out = []
    for index, (outcomes, baseline) in enumerate(zip(rows, baselines)):
        entry = {"accuracy_ci": accuracy[index].pair(), "kl_ci": kl[index].pair(),
                 "accuracy_by_family": by_family(outcomes)}
        if baseline is not None:
            entry["vs_metacompress"] = {
                "accuracy_diff": accuracy_diff[index].value,
                "accuracy_diff_ci": accuracy_diff[index].pair(),
                "kl_diff": kl_diff[index].value,
                "kl_diff_ci": kl_diff[index].pair(),
                "mcnemar_p": mcnemar_p(outcomes.right, rows[baseline].right),
            }
        out.append(entry)
    return out
