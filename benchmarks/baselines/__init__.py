r"""Baselines of deep imbalanced regression, written from their papers' equations.

* **Balanced MSE, BMC** (:mod:`.bmc`) — Ren, Zhang, Yi, Wang, Zheng, "Balanced MSE for
  Imbalanced Visual Regression", CVPR 2022 (Batch-based Monte-Carlo, Sec. 3.3 and
  Algorithm 1).

They follow the package's shape (a pure function plus a thin ``nn.Module``) but live in
``benchmarks/``: they are comparison points for the accuracy benchmark, not library API.
LDS and RankSim moved into the library (:class:`dirloss.LabelDensityWeights`,
:class:`dirloss.RankSimLoss`), corrected to the published methods.
"""

from .bmc import BMCLoss, bmc_loss

__all__ = ["BMCLoss", "bmc_loss"]
