"""The fine-tuning benchmark's settings (:class:`FinetuneConfig`), paths and progress bars."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from benchmarks.data import REPO_ROOT

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional: no progress bars without it

    class tqdm:  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...
        def update(self, n: int = 1) -> None: ...
        def set_postfix(self, **kwargs: Any) -> None: ...
        def close(self) -> None: ...

        @staticmethod
        def write(s: str) -> None:
            print(s)


__all__ = ["DEFAULT_OUT_DIR", "DEFAULT_PLOT", "SPLITS", "FinetuneConfig", "tqdm"]

DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results" / "finetune"
DEFAULT_PLOT = REPO_ROOT / "docs" / "img" / "finetune-per-bin.png"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a run; the part of a result file that must match for it to be reused.

    Attributes:
        top_layers: transformer layers fine-tuned (the rest are frozen and cached).
        max_length: token cap of a sentence pair.
        batch_size: pairs per step.
        epochs: passes over the training split.
        lr: AdamW learning rate of the fine-tuned transformer layers.
        head_lr_mult: the head's (``fc`` or the grouped head) learning rate over ``lr``; the
            grouped head's classifier starts at zero and must be learnt in the budget.
        weight_decay: AdamW weight decay.
        warmup: fraction of the steps with a linear warm-up; linear decay to 0 after it.
        clip_norm: gradient-norm clip (the Hugging Face Trainer's default, 1.0).
        num_groups: G, equal-width groups over the training range.
        paper_lambda_mse: ``lambda_mse`` of ``GroupDIRLoss.paper`` on standardised targets.
        ranksim_gamma, ranksim_lambda: RankSim's weight and interpolation strength; gamma 1
            is what the accuracy benchmark's validation picked on STS-B-DIR (frozen encoder)
            with the corrected gradient (30, the old value, was tuned while the gradient was
            mostly zero).
        lds_kernel_size, lds_sigma: the LDS Gaussian kernel (in 0.1-score bins).
        subset: ``(train, val, test)`` pair counts of a random subset (``--quick``), or None.
    """

    top_layers: int = 2
    max_length: int = 64
    batch_size: int = 32
    epochs: int = 6
    lr: float = 5e-5
    head_lr_mult: float = 30.0
    weight_decay: float = 0.01
    warmup: float = 0.1
    clip_norm: float = 1.0
    num_groups: int = 10
    paper_lambda_mse: float = 10.0
    ranksim_gamma: float = 1.0
    ranksim_lambda: float = 2.0
    lds_kernel_size: int = 5
    lds_sigma: float = 2.0
    subset: tuple[int, int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subset"] = list(self.subset) if self.subset is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneConfig:
        subset = d.get("subset")
        return cls(**{**d, "subset": tuple(subset) if subset is not None else None})
