r"""Baselines of deep imbalanced regression, written from their papers' equations.

* **LDS + inverse-square-root reweighting** (:mod:`.lds`) — Yang, Zha, Chen, Wang, Katabi,
  "Delving into Deep Imbalanced Regression", ICML 2021 (label distribution smoothing,
  Sec. 3.1).
* **Balanced MSE, BMC** (:mod:`.bmc`) — Ren, Zhang, Yi, Wang, Zheng, "Balanced MSE for
  Imbalanced Visual Regression", CVPR 2022 (Batch-based Monte-Carlo, Sec. 3.3 and
  Algorithm 1).
* **RankSim** (:mod:`.ranksim`) — Gong, Mori, Tung, "RankSim: Ranking Similarity
  Regularization for Deep Imbalanced Regression", ICML 2022, with the ranking differentiated
  by the blackbox combinatorial-solver gradient of Vlastelica, Paulus, Musil, Martius,
  Rolínek, "Differentiation of Blackbox Combinatorial Solvers", ICLR 2020.

They follow the package's shape (a pure function plus a thin ``nn.Module``) but live in
``benchmarks/``: they are comparison points for the accuracy benchmark, not library API.
``RankSimLoss`` with ``unique_labels=True`` (the paper's sampling) calls ``torch.unique`` and
so syncs with the host and does not compile with ``fullgraph=True``.
"""

from .bmc import BMCLoss, bmc_loss
from .lds import (
    LDSReweighting,
    LDSWeightedMSELoss,
    gaussian_kernel,
    lds_bin_weights,
    lds_effective_density,
    weighted_mse_loss,
)
from .ranksim import RankSimLoss, blackbox_rank, ranksim_loss, unique_label_mask

__all__ = [
    "BMCLoss",
    "LDSReweighting",
    "LDSWeightedMSELoss",
    "RankSimLoss",
    "blackbox_rank",
    "bmc_loss",
    "gaussian_kernel",
    "lds_bin_weights",
    "lds_effective_density",
    "ranksim_loss",
    "unique_label_mask",
    "weighted_mse_loss",
]
