"""The targets of the library's defaults (``dirloss``) on the accuracy benchmark.

:func:`dataset_checks` judges one data set (as :class:`~benchmarks.results.Checks`);
:func:`check_targets` turns the checks of all finished data sets into the plain-language
verdicts of ``summary.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from benchmarks.results import Checks, DatasetResult, MethodResult

__all__ = ["DIRLOSS", "GROUP_DIR", "VANILLA", "check_targets", "dataset_checks"]

GROUP_DIR = "group-dir"
DIRLOSS = "dirloss"
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
