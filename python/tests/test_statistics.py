"""The evaluation's statistics (SPEC section 10, v4; `metacompress.evaluation.statistics`): the
paired bootstrap's interval of a difference covers the true difference about 95 % of the time
on synthetic pairs of methods with known accuracies; identical methods differ by an interval
around 0 ([0, 0] exactly when every answer agrees); McNemar's exact p equals the binomial sum
by hand; resampling keeps an image's questions together and shares its resamples between rows."""
import math

import numpy as np
import pytest

from metacompress.evaluation import statistics
from metacompress.evaluation.statistics import Outcomes, bootstrap_ratios, mcnemar_p, row_statistics


def outcomes(right, per_image, kl=None) -> Outcomes:
    """Outcomes of questions `right` (bool), `per_image` consecutive questions an image."""
    right = np.asarray(right, dtype=bool)
    images = len(right) // per_image
    kl = np.zeros(images) if kl is None else np.asarray(kl, dtype=float)
    return Outcomes(right, np.repeat(np.arange(images), per_image), kl, np.full(images, per_image),
                    [None] * len(right))


def two_methods(rng, images, per_image=3):
    """Answers of two methods on `images` images of `per_image` questions with known expected
    accuracies: half the images easy (method A right with probability 0.95, B 0.85), half hard
    (0.55, 0.35); one uniform draw a question decides both (A is right wherever B is), so the
    two are paired and questions of one image are alike. True accuracies 0.75 and 0.60."""
    hard = np.repeat(rng.random(images) < 0.5, per_image)
    draw = rng.random(images * per_image)
    first = draw < np.where(hard, 0.55, 0.95)
    second = draw < np.where(hard, 0.35, 0.85)
    return first, second


def test_the_interval_of_a_difference_covers_the_true_difference_95_percent_of_the_time(seed):
    rng = np.random.default_rng(seed)
    repetitions, images = 200, 100
    covered_difference = covered_accuracy = 0
    for repetition in range(repetitions):
        first, second = two_methods(rng, images)
        rows = [outcomes(first, 3), outcomes(second, 3)]
        out = row_statistics(rows, [1, None], resamples=1999, seed=repetition)
        low, high = out[0]["vs_metacompress"]["accuracy_diff_ci"]
        covered_difference += low <= 0.15 <= high
        low, high = out[0]["accuracy_ci"]
        covered_accuracy += low <= 0.75 <= high
    # 95 % nominal: 200 repetitions put the observed share within about 0.90-0.99.
    assert 0.90 <= covered_difference / repetitions <= 0.99, f"seed {seed}: {covered_difference}"
    assert 0.90 <= covered_accuracy / repetitions <= 0.99, f"seed {seed}: {covered_accuracy}"


def test_identical_methods_differ_by_an_interval_around_zero(seed):
    rng = np.random.default_rng(seed)
    first, _ = two_methods(rng, 40)
    kl = rng.random(40)
    # The same answers and KL: every resample's difference is exactly 0.
    same = row_statistics([outcomes(first, 3, kl), outcomes(first.copy(), 3, kl.copy())], [1, None])[0]
    vs = same["vs_metacompress"]
    assert vs["accuracy_diff"] == 0 and vs["accuracy_diff_ci"] == [0.0, 0.0], f"seed {seed}"
    assert vs["kl_diff"] == 0 and vs["kl_diff_ci"] == [0.0, 0.0], f"seed {seed}"
    assert vs["mcnemar_p"] == 1.0
    # Equally accurate but answering differently (each image given the answers of the one
    # before): the difference is 0 on the data, its interval holds it and is not [0, 0].
    other = first.reshape(40, 3)[np.roll(np.arange(40), 1)].reshape(-1)
    vs = row_statistics([outcomes(first, 3), outcomes(other, 3)], [1, None])[0]["vs_metacompress"]
    assert vs["accuracy_diff"] == 0, f"seed {seed}"
    low, high = vs["accuracy_diff_ci"]
    if len(set(first.reshape(40, 3).sum(1))) > 1:       # images not all alike
        assert low < 0 < high, f"seed {seed}: {low, high}"


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    # 1 question only the row gets right, 6 only the other: p = 2 P(X <= 1), X ~ B(7, 1/2).
    right = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    other = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    by_hand = 2 * (math.comb(7, 0) + math.comb(7, 1)) / 2 ** 7
    assert by_hand == 0.125
    assert mcnemar_p(right, other) == pytest.approx(by_hand, rel=1e-12)
    assert mcnemar_p(other, right) == pytest.approx(by_hand, rel=1e-12)
    # 3 against 1: P(X <= 1) + P(X >= 3) for B(4, 1/2) = 10 / 16.
    assert mcnemar_p([1, 1, 1, 0, 1], [0, 0, 0, 1, 1]) == pytest.approx(10 / 16, rel=1e-12)
    # No discordant pair: nothing tells the two apart.
    assert mcnemar_p([1, 0, 1], [1, 0, 1]) == 1.0


def test_resampling_keeps_an_images_questions_together_and_shares_resamples(seed):
    rng = np.random.default_rng(seed)
    images = 30
    per_image = rng.random(images) < 0.6
    # Three questions an image, all answered alike: drawn by image, each resample's accuracy is
    # the share of right images, exactly as with one question an image. Drawn question by
    # question, it would not be.
    clustered = bootstrap_ratios([np.repeat(per_image, 3).reshape(images, 3).sum(1)], [np.full(images, 3)],
                                 seed=seed)[0]
    single = bootstrap_ratios([per_image.astype(float)], [np.ones(images)], seed=seed)[0]
    assert (clustered.low, clustered.high) == pytest.approx((single.low, single.high), abs=1e-12)
    assert clustered.low < clustered.value < clustered.high, f"seed {seed}"
    # One row's interval is the same alone as beside others: every row reads the same resamples.
    counts = rng.integers(0, 4, size=(3, images))
    alone = bootstrap_ratios(counts[:1], np.full(images, 3), seed=seed)[0]
    together = bootstrap_ratios(counts, np.full(images, 3), [(1, 0), (2, 0)], seed=seed)[0]
    assert (alone.low, alone.high) == (together.low, together.high)


def test_fewer_than_two_images_give_no_interval_and_families_are_counted():
    one = outcomes([True, False, True], 3)
    one.family = ["object", "scene", "object"]
    out = row_statistics([one, outcomes([True, True, False], 3)], [None, 0])
    assert out[0]["accuracy_ci"] is None and out[0]["kl_ci"] is None
    assert out[0]["accuracy_by_family"] == {"object": 1.0, "scene": 0.0}
    assert out[1]["accuracy_by_family"] == {}
    assert out[1]["vs_metacompress"]["accuracy_diff"] == pytest.approx(0)
    assert out[1]["vs_metacompress"]["accuracy_diff_ci"] is None
    assert "vs_metacompress" not in out[0]
    assert statistics.CONFIDENCE == 0.95
