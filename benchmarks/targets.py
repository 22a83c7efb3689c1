"""The targets of the library's defaults (``dirloss``) on the accuracy benchmark.

:func:`dataset_checks` judges one data set (as :class:`~benchmarks.results.Checks`);
:func:`check_targets` turns the checks of all finished data sets into the plain-language
verdicts of ``summary.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from benchmarks.results import Checks, DatasetResult, MethodResult

__all__ = [
    "DIRLOSS",
    "DIRLOSS_TAIL",
    "GROUP_DIR",
    "VANILLA",
    "check_balanced_targets",
    "check_targets",
    "dataset_checks",
]

GROUP_DIR = "group-dir"
DIRLOSS = "dirloss"
DIRLOSS_TAIL = "dirloss-tail"
VANILLA = "vanilla"


def dataset_checks(kind: str, methods: Mapping[str, MethodResult]) -> Checks | None:
    """The targets that can be judged on one data set for the library's defaults
    (``dirloss``; needs ``vanilla`` too, ``None`` otherwise).

    * every data set: dirloss's overall MAE at most 2 % above vanilla's; its bMAE below
      vanilla's; its bMAE the best or within one standard deviation (of the best method's
      bMAE over seeds) of the best.
    * STS-B-DIR: overall MAE at least 5 % below vanilla's, few-shot MAE not above it.
    """
    if DIRLOSS not in methods or VANILLA not in methods:
        return None
    d, v = methods[DIRLOSS].test_mean, methods[VANILLA].test_mean
    best = min(methods, key=lambda m: methods[m].test_mean["bmae"])
    best_bmae, best_std = methods[best].test_mean["bmae"], methods[best].test_std["bmae"]
    stsb = kind == "stsb"
    return Checks(
        all_mae_vs_vanilla=d["all_mae"] / v["all_mae"] - 1.0,
        all_mae_not_2pct_worse_than_vanilla=d["all_mae"] <= 1.02 * v["all_mae"],
        bmae_vs_vanilla=d["bmae"] / v["bmae"] - 1.0,
        bmae_beats_vanilla=d["bmae"] < v["bmae"],
        bmae_best_method=best,
        bmae_best_std=best_std,
        bmae_best_or_within_1std=best == DIRLOSS or d["bmae"] <= best_bmae + best_std,
        few_mae_vs_vanilla=d["few_mae"] / v["few_mae"] - 1.0 if stsb else None,
        few_mae_not_above_vanilla=d["few_mae"] <= v["few_mae"] if stsb else None,
        all_mae_5pct_below_vanilla=d["all_mae"] <= 0.95 * v["all_mae"] if stsb else None,
    )


def _verdict(ok: bool | None) -> str:
    return "MET" if ok else "MISSED"


def check_targets(results: Mapping[str, DatasetResult]) -> list[str]:
    """Plain-language verdicts on the targets of the library's defaults over all finished
    data sets (the counts scale with the number of data sets: 7 and 6 of 9)."""
    checked = {n: r.checks for n, r in results.items() if r.checks is not None}
    if not checked:
        return []
    lines: list[str] = []
    for name, c in checked.items():
        if results[name].kind == "stsb" and c.few_mae_vs_vanilla is not None:
            lines.append(
                f"- {name}: overall MAE >= 5% below vanilla: "
                f"{_verdict(c.all_mae_5pct_below_vanilla)} ({100 * c.all_mae_vs_vanilla:+.1f}%); "
                f"few-shot MAE not above vanilla: {_verdict(c.few_mae_not_above_vanilla)} "
                f"({100 * c.few_mae_vs_vanilla:+.1f}%)"
            )
    n = len(checked)
    worse = [f"{k} ({100 * c.all_mae_vs_vanilla:+.1f}%)" for k, c in checked.items()
             if not c.all_mae_not_2pct_worse_than_vanilla]
    beats = [k for k, c in checked.items() if c.bmae_beats_vanilla]
    best = [k for k, c in checked.items() if c.bmae_best_or_within_1std]
    need_beat, need_best = math.ceil(7 * n / 9), math.ceil(6 * n / 9)
    lines.append(
        f"- dirloss overall MAE never > 2% worse than vanilla: {_verdict(not worse)}"
        + (f" (worse on: {', '.join(worse)})" if worse else f" ({n}/{n})")
    )
    lines.append(
        f"- dirloss bMAE below vanilla on >= {need_beat} of {n}: "
        f"{_verdict(len(beats) >= need_beat)} ({len(beats)}/{n}; not on: "
        f"{', '.join(k for k in checked if k not in beats) or 'none'})"
    )
    lines.append(
        f"- dirloss bMAE best or within 1 std of the best on >= {need_best} of {n}: "
        f"{_verdict(len(best) >= need_best)} ({len(best)}/{n}: {', '.join(best) or 'none'})"
    )
    return lines


def _geomean(ratios: list[float]) -> float:
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def check_balanced_targets(results: Mapping[str, DatasetResult]) -> list[str]:
    """Verdicts under the ``dir`` protocol (balanced validation and test), on test MAE over
    all samples and on the few-shot region (counts scale with the number of data sets):

    * defaults: All MAE below vanilla on every data set, and best or within one std of the
      best method on 6 of 9;
    * defaults: few-shot MAE below vanilla on every data set and >= 15 % below it in
      geometric mean;
    * no method beats the defaults on both All and few-shot MAE on any data set;
    * the tail operating point (``dirloss-tail``): few-shot MAE within 3 % of the best
      method's with All MAE no worse than that method's, on 6 of 9.

    A data set whose test split holds no few-shot row (a target without rare bins) is left
    out of the few-shot checks, and the lines say so.
    """
    done = {n: r for n, r in results.items() if DIRLOSS in r.methods and VANILLA in r.methods}
    if not done:
        return []
    n = len(done)
    need = math.ceil(6 * n / 9)
    no_few = [k for k, r in done.items()
              if not math.isfinite(r.methods[VANILLA].test_mean["few_mae"])]
    m_few = n - len(no_few)
    need_few = math.ceil(6 * m_few / 9)
    below, near, few_below, ratios, dominated, tail_ok = [], [], [], [], [], []
    for name, r in done.items():
        ms = r.methods
        d, v = ms[DIRLOSS].test_mean, ms[VANILLA].test_mean
        if d["all_mae"] < v["all_mae"]:
            below.append(name)
        best = min(ms, key=lambda m: ms[m].test_mean["all_mae"])
        if d["all_mae"] <= ms[best].test_mean["all_mae"] + ms[best].test_std["all_mae"]:
            near.append(name)
        if name in no_few:
            continue
        if d["few_mae"] < v["few_mae"]:
            few_below.append(name)
        ratios.append(d["few_mae"] / v["few_mae"])
        dominated += [f"{name}: {m}" for m, mr in ms.items() if m not in (DIRLOSS, DIRLOSS_TAIL)
                      and mr.test_mean["all_mae"] < d["all_mae"]
                      and mr.test_mean["few_mae"] < d["few_mae"]]
        if DIRLOSS_TAIL in ms:
            t = ms[DIRLOSS_TAIL].test_mean
            others = [m for m in ms if m not in (DIRLOSS, DIRLOSS_TAIL)]
            top = min(others, key=lambda m: ms[m].test_mean["few_mae"])
            b = ms[top].test_mean
            if t["few_mae"] <= 1.03 * b["few_mae"] and t["all_mae"] <= b["all_mae"]:
                tail_ok.append(name)
    g = _geomean(ratios) - 1.0 if ratios else math.nan
    few_done = [k for k in done if k not in no_few]
    lines = [
        f"- defaults: All MAE below vanilla on {n} of {n}: {_verdict(len(below) == n)} "
        f"({len(below)}/{n}; not on: {', '.join(k for k in done if k not in below) or 'none'})",
        f"- defaults: All MAE best or within 1 std of the best on >= {need} of {n}: "
        f"{_verdict(len(near) >= need)} ({len(near)}/{n})",
        f"- defaults: few-shot MAE below vanilla on every data set: "
        f"{_verdict(len(few_below) == m_few)} ({len(few_below)}/{m_few}; not on: "
        f"{', '.join(k for k in few_done if k not in few_below) or 'none'})",
        f"- defaults: few-shot MAE >= 15% below vanilla in geometric mean: "
        f"{_verdict(g <= -0.15)} ({100 * g:+.1f}%)",
        f"- no method beats the defaults on both All and few-shot MAE: {_verdict(not dominated)}"
        + (f" ({'; '.join(dominated)})" if dominated else ""),
    ]
    if any(DIRLOSS_TAIL in r.methods for r in done.values()):
        lines.append(
            f"- tail point: few-shot MAE within 3% of the best method's, All MAE no worse, on "
            f">= {need_few} of {m_few}: {_verdict(len(tail_ok) >= need_few)} "
            f"({len(tail_ok)}/{m_few}: {', '.join(tail_ok) or 'none'})"
        )
    if no_few:
        lines.append(f"- few-shot checks leave out (no few-shot test rows): {', '.join(no_few)}")
    return lines
