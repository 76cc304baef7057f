"""The evaluation's results for people: the printed table (every row with its 95 % intervals and
per-family accuracy, then each method against MetaCompress at the same keep) and `--plot`'s
figure (accuracy and KL against the visual tokens read, with interval bars). Both read the
JSON document `harness.evaluate` returns, nothing else."""
from __future__ import annotations


def label(row: dict) -> str:
    """A row's method, with `(init)` where it is MetaCompress untrained."""
    return row["method"] + (" (init)" if row.get("trained") is False else "")


def with_interval(value: float, interval, digits: int = 3, signed: bool = False) -> str:
    """`0.803 [0.76, 0.84]`: the value and its interval one digit shorter (the value alone
    where there is no interval)."""
    sign = "+" if signed else ""
    text = f"{value:{sign}.{digits}f}"
    if interval is None:
        return text
    low, high = interval
    short = max(digits - 1, 1)
    return f"{text} [{low:{sign}.{short}f}, {high:{sign}.{short}f}]"


def verdict(interval) -> str:
    """`lower`, `higher` (the interval excludes 0) or `tie` (it holds 0); `?` without one."""
    if interval is None:
        return "?"
    low, high = interval
    return "higher" if low > 0 else "lower" if high < 0 else "tie"


def p_value(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table(result: dict) -> str:
    """The rows as a text table (skipped rows with their reason), then every method against
    MetaCompress of the same run at the same keep."""
    rows = result["rows"]
    families = list(dict.fromkeys(family for row in rows for family in row.get("accuracy_by_family", {})))
    lines = [f"{result['model']} on {result['data']}: {result['samples']} images, "
             f"{result['questions']} questions (up to {result['turns']} turns an image), seed {result['seed']}"]
    if "confidence" in result:
        lines.append(f"[low, high]: {100 * result['confidence']:.0f} % paired bootstrap over images "
                     f"({result['resamples']} resamples, the same for every row)")
    width = max([len(label(row)) for row in rows] + [13])
    header = (f"{'method':<{width}} {'keep':>5} {'scope':<5} {'tokens':>7} {'accuracy':<20} "
              f"{'agreement':>9} {'kl':<23} {'prefill_ms':>10}")
    lines.append(header + "".join(f" {family:>7}" for family in families))
    for row in rows:
        line = (f"{label(row):<{width}} {row['keep']:>5.2f} {row.get('scope') or '-':<5} "
                f"{row['tokens']:>7.1f} {with_interval(row['accuracy'], row.get('accuracy_ci')):<20} "
                f"{row['agreement']:>9.3f} {with_interval(row['kl'], row.get('kl_ci'), 4):<23} "
                f"{1000 * row['prefill_s']:>10.2f}")
        by_family = row.get("accuracy_by_family", {})
        lines.append(line + "".join(f" {by_family[family]:>7.3f}" if family in by_family else f" {'-':>7}"
                                    for family in families))
    for row in result["skipped"]:
        lines.append(f"{row['method']:<{width}} {row['keep']:>5.2f}  skipped: {row['reason']}")
    compared = [row for row in rows if row.get("vs_metacompress")]
    if compared:
        trained = result.get("metacompress_trained")
        name = "metacompress" + (" (init, untrained)" if trained is False else "")
        lines += ["", f"against {name} of this run at the same keep: this row minus it, "
                  "McNemar's exact p of the accuracy difference; tie: the interval holds 0",
                  f"{'method':<{width}} {'keep':>5} {'accuracy diff':<24} {'p':>7} {'kl diff':<26} verdict"]
        for row in compared:
            vs = row["vs_metacompress"]
            lines.append(f"{label(row):<{width}} {row['keep']:>5.2f} "
                         f"{with_interval(vs['accuracy_diff'], vs['accuracy_diff_ci'], signed=True):<24} "
                         f"{p_value(vs['mcnemar_p']):>7} "
                         f"{with_interval(vs['kl_diff'], vs['kl_diff_ci'], 4, signed=True):<26} "
                         f"accuracy {verdict(vs['accuracy_diff_ci'])}, kl {verdict(vs['kl_diff_ci'])}")
    return "\n".join(lines)


def plot(result: dict, path, format: str | None = None) -> None:
    """Accuracy and KL against the visual tokens the language model read: one line per
    method with its intervals as bars, the full-token model as a dashed line (its accuracy
    interval shaded). `path`: a file name or a stream (`format`: png, pdf or svg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (accuracy_axes, kl_axes) = plt.subplots(1, 2, figsize=(11, 4.4))
    rows = result["rows"]
    full = next(row for row in rows if row["method"] == "full")
    accuracy_axes.axhline(full["accuracy"], color="black", linestyle="--",
                          label=f"full ({full['tokens']:.0f} tokens)")
    if full.get("accuracy_ci"):
        accuracy_axes.axhspan(*full["accuracy_ci"], color="black", alpha=0.08)
    labels = list(dict.fromkeys(label(row) for row in rows if row["method"] != "full"))
    for index, name in enumerate(labels):
        points = sorted((row for row in rows if label(row) == name), key=lambda row: row["tokens"])
        # Each method a little aside (1 % of the tokens), so that bars at one keep do not hide
        # each other.
        dodge = 1 + 0.01 * (index - (len(labels) - 1) / 2)
        tokens = [row["tokens"] * dodge for row in points]
        for axes, key in ((accuracy_axes, "accuracy"), (kl_axes, "kl")):
            values = [row[key] for row in points]
            intervals = [row.get(f"{key}_ci") for row in points]
            bars = None
            if all(intervals):
                bars = [[value - low for value, (low, _) in zip(values, intervals)],
                        [high - value for value, (_, high) in zip(values, intervals)]]
            axes.errorbar(tokens, values, yerr=bars, marker="o", capsize=3, label=name)
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_ylim(0, 1.02)
    kl_axes.set_ylabel("KL(full || reduced), mean per answer token")
    kl_axes.set_ylim(bottom=0)
    confidence = result.get("confidence")
    for axes in (accuracy_axes, kl_axes):
        axes.set_xlabel("visual tokens the language model read (mean per image)")
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize="small")
    bars = f"; bars: {100 * confidence:.0f} % paired bootstrap" if confidence else ""
    figure.suptitle(f"{result['model']} on {result['data']} ({result['samples']} images, "
                    f"{result['questions']} questions{bars})")
    figure.tight_layout()
    figure.savefig(path, dpi=120, format=format)
    plt.close(figure)
