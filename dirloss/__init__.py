"""dirloss: group classification with descending soft labels for deep imbalanced regression.

Drop-in PyTorch modules for the method of Pu et al., "Leveraging Group Classification with
Descending Soft Labeling for Deep Imbalanced Regression" (AAAI 2025)::

    binner = GroupBinner(num_groups=10).fit(train_targets)
    head = MultiExpertHead.from_linear(model.fc, num_groups=10)
    criterion = GroupDIRLoss(binner)
"""

from . import functional
from .balanced_mse import BMCLoss, BNILoss, GAILoss
from .binning import GroupBinner
from .conr import ConRLoss
from .fds import FeatureDistributionSmoothing
from .heads import HeadOutput, MultiExpertHead
from .inference import InferenceChoice, select_inference
from .losses import DescendingSoftLabelLoss, GroupContrastiveLoss
from .metrics import balanced_mae
from .objective import GroupDIRLoss, GroupDIRLossOutput
from .plots import (
    plot_binned_error,
    plot_inference_tradeoff,
    plot_label_histogram,
    plot_per_bin_error,
)
from .ranksim import RankSimLoss
from .reweighting import LabelDensityWeights
from .splits import DIRSplit, dir_split
from .streaming import ShotMetrics

__version__ = "0.2.0"

__all__ = [
    "BMCLoss",
    "BNILoss",
    "ConRLoss",
    "DIRSplit",
    "DescendingSoftLabelLoss",
    "FeatureDistributionSmoothing",
    "GAILoss",
    "GroupBinner",
    "GroupContrastiveLoss",
    "GroupDIRLoss",
    "GroupDIRLossOutput",
    "HeadOutput",
    "InferenceChoice",
    "LabelDensityWeights",
    "MultiExpertHead",
    "RankSimLoss",
    "ShotMetrics",
    "balanced_mae",
    "dir_split",
    "functional",
    "plot_binned_error",
    "plot_inference_tradeoff",
    "plot_label_histogram",
    "plot_per_bin_error",
    "select_inference",
]
