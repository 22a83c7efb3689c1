"""Log-log plot of contrastive forward+backward time vs batch size from bench_ops JSON.

    python benchmarks/plot_ops.py benchmarks/results/ops-cpu.json docs/img/ops-time-cpu.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LABELS = {
    "dirloss": "dirloss fused kernel",
    "floor": "floor: normalise + N x N distances",
    "rnc-loop": "Rank-N-Contrast column loop",
    "dirloss+compile": "dirloss, torch.compile",
    "floor+compile": "floor, torch.compile",
    "continuous": "dirloss, real-valued labels (sort kernel)",
}


def _pyplot() -> Any:
    """matplotlib (imported here so that ``--help`` works without it), or exit naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            'plot_ops needs matplotlib, not installed: pip install -e ".[bench]"'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main(src: str, dst: str) -> None:
    plt = _pyplot()
    data = json.loads(Path(src).read_text())
    rows = [r for r in data["rows"] if r["op"] == "contrastive" and "median_ms" in r]
    dims = sorted({r["d"] for r in rows})
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4.2), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for impl, label in LABELS.items():
            pts = sorted((r["n"], r["median_ms"]) for r in rows
                         if r["d"] == d and r["impl"] == impl)
            if pts:
                style = "--" if "compile" in impl else ":" if impl == "continuous" else "-"
                ax.plot(*zip(*pts), style, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch size N", ylabel="forward + backward (ms)",
               title=f"D = {d} ({data['machine']['cpu']}, {data['machine']['threads']} threads)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path,
                        help="bench_ops JSON, e.g. benchmarks/results/ops-cpu.json")
    parser.add_argument("dst", type=Path, help="the PNG to write, e.g. docs/img/ops-time-cpu.png")
    args = parser.parse_args(argv)
    if not args.src.is_file():
        parser.error(f"no such file: {args.src}")
    main(str(args.src), str(args.dst))


if __name__ == "__main__":
    cli()
