r"""STS-B-DIR with a fine-tuned encoder: does Group-DIR help when the representation is learnt?

The frozen-feature benchmark (:mod:`benchmarks.dir_bench`) trains an MLP on fixed sentence
embeddings. Here every method fine-tunes the same pretrained transformer, the offline
all-MiniLM-L6-v2 of ``examples/retrofit_transformer.py``, used as a *cross-encoder*: both
sentences go through it together (``[CLS] s1 [SEP] s2 [SEP]``), the token states are
mean-pooled into a 384-d feature and a head predicts the similarity score.

**Same start, same data, only head and loss differ.** For a seed, every method starts from
the same pretrained encoder and the same linear layer ``fc`` (drawn from the seed; the
grouped heads are retrofitted from it with :meth:`dirloss.MultiExpertHead.from_linear`), sees
the training pairs in the same order (a generator seeded with the seed), for the same
epochs, with the same optimiser and learning rates. Targets are standardised with the
training split's mean and standard deviation; metrics are in score units (0..5) on the
published STS-B-DIR test regions (50 bins of 0.1; many / medium / few = 756 / 170 / 74).

Methods (settings fixed before any run; nothing is tuned on the test split):

* ``vanilla`` — MSE.
* ``lds`` — MSE reweighted by LDS inverse-square-root weights (Yang et al. 2021; 50 bins of
  0.1 score, Gaussian kernel size 5, sigma 2: the published STS-B-DIR setting).
* ``ranksim`` — MSE + RankSim on the pooled features (Gong et al. 2022; gamma 30,
  lambda 2: the frozen benchmark's validation choice on STS-B-DIR, since the published
  3e-4 belongs to the authors' unnormalised loss scale).
* ``group-dir`` — the paper's objective: ``GroupDIRLoss.paper(binner, lambda_mse=10)`` (as
  ``benchmarks/methods.py`` does on standardised targets), independent experts, argmax.
* ``dirloss`` — the library's defaults: ``MultiExpertHead.from_linear(fc, 10)`` +
  ``GroupDIRLoss(binner)``; the inference setting is picked with
  :func:`dirloss.select_inference` on the dev split (the library's own rule).

G = 10 equal-width groups over the training range.

**Budget (2 CPU cores).** Fine-tuning all six layers for 5 methods x 3 seeds does not fit
in about an hour on two cores, so the lower ``6 - top_layers`` layers are frozen and their
output is computed once per data set and cached (``~/.cache/dirloss/finetune-*.pt``, or
``--cache-dir`` / ``$DIRLOSS_CACHE_DIR``); each run trains only the top ``top_layers``
transformer layers (default 2, dropout on) + mean pooling + head. The cache is checked
against the full model at build time (the cached lower layers followed by the top layers
must reproduce the encoder's output). Pairs are truncated to ``max_length`` = 64 tokens (3 %
of the training pairs are longer). Runs are spread over ``--workers`` processes with
``--threads`` each (default 2 x 1, the faster split on two cores).

Every finished (method, seed) writes ``<out-dir>/<method>-seed<k>.json`` at once and is
skipped on a rerun with the same settings, so an interrupted run continues where it
stopped. At the end ``summary.md`` (mean ± std over seeds) and the per-bin plot are
written from all JSON files present.

    python -m benchmarks.finetune_bench                  # the full run (about an hour)
    python -m benchmarks.finetune_bench --quick --out-dir /tmp/ft   # a smoke test, seconds
    python -m benchmarks.finetune_bench --summarize      # only rebuild summary.md and the plot

This module is the command line; the stages are in :mod:`benchmarks.finetune`: ``config``
(settings), ``data`` (pairs, encoder, cache), ``methods`` (one builder per method),
``training`` (one run), ``evaluation``, ``results`` (the per-run record), ``runner`` (which
runs, resumable, workers) and ``reporting`` (``summary.md``, the plot).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.finetune.config import (  # noqa: E402
    DEFAULT_OUT_DIR,
    DEFAULT_PLOT,
    FinetuneConfig,
)
from benchmarks.finetune.data import build_cache  # noqa: E402
from benchmarks.finetune.methods import ALL_METHODS, EXTRA_METHODS, METHODS  # noqa: E402
from benchmarks.finetune.reporting import summarize  # noqa: E402
from benchmarks.finetune.runner import run_all  # noqa: E402
from benchmarks.finetune.training import run_one  # noqa: E402

__all__ = [
    "ALL_METHODS",
    "EXTRA_METHODS",
    "METHODS",
    "FinetuneConfig",
    "build_cache",
    "main",
    "run_one",
    "summarize",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.finetune_bench",
        description="STS-B-DIR with a fine-tuned all-MiniLM-L6-v2 cross-encoder: MSE, LDS, "
        "RankSim, the paper's Group-DIR and the dirloss defaults, same start, data order and "
        "budget.",
    )
    d = FinetuneConfig()
    add = parser.add_argument
    add("--methods", nargs="+", choices=list(ALL_METHODS), default=list(METHODS),
        help=f"methods to run (default {' '.join(METHODS)}; {', '.join(EXTRA_METHODS)} on "
        "request)")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    add("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    add("--top-layers", type=int, default=d.top_layers,
        help=f"transformer layers fine-tuned; the rest are cached (default {d.top_layers})")
    add("--max-length", type=int, default=d.max_length,
        help=f"tokens per sentence pair (default {d.max_length})")
    add("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    add("--lr", type=float, default=d.lr,
        help=f"learning rate of the fine-tuned layers (default {d.lr:g})")
    add("--head-lr-mult", type=float, default=d.head_lr_mult,
        help=f"head learning rate over --lr (default {d.head_lr_mult:g})")
    add("--subset", type=int, nargs=3, metavar=("TRAIN", "DEV", "TEST"), default=None,
        help="random subsets of the splits (timing probes, smoke tests)")
    add("--workers", type=int, default=2,
        help="processes, one (method, seed) each (default 2)")
    add("--threads", type=int, default=1, help="torch threads per process (default 1)")
    add("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
        help="result JSON files and summary.md (default benchmarks/results/finetune)")
    add("--plot", type=Path, default=None,
        help="per-bin plot (default docs/img/finetune-per-bin.png for the default --out-dir, "
        "else <out-dir>/per-bin.png)")
    add("--data-dir", type=Path, default=None,
        help="holds stsb-dir/ (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    add("--cache-dir", type=Path, default=None,
        help="cache of the frozen layers' states (default $DIRLOSS_CACHE_DIR or "
        "~/.cache/dirloss)")
    add("--no-progress", action="store_true", help="no progress bars")
    add("--quick", action="store_true",
        help="smoke test: 128 / 64 / 64 pairs, 1 epoch, seed 0, 1 worker (seconds)")
    add("--summarize", action="store_true",
        help="only rebuild summary.md and the plot from the JSON files")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "top_layers", "max_length", "batch_size", "workers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.subset, args.epochs, args.seeds, args.workers = [128, 64, 64], 1, [0], 1
    plot = args.plot
    if plot is None:
        default_out = args.out_dir.resolve() == DEFAULT_OUT_DIR.resolve()
        plot = DEFAULT_PLOT if default_out else args.out_dir / "per-bin.png"
    if not args.summarize:
        config = FinetuneConfig(
            top_layers=args.top_layers, max_length=args.max_length, batch_size=args.batch_size,
            epochs=args.epochs, lr=args.lr, head_lr_mult=args.head_lr_mult,
            subset=tuple(args.subset) if args.subset else None,
        )
        run_all(args.methods, args.seeds, config, args.out_dir, data_dir=args.data_dir,
                cache_dir=args.cache_dir, workers=args.workers, threads=args.threads,
                progress=not args.no_progress)
    print(summarize(args.out_dir, plot))


if __name__ == "__main__":
    main()
