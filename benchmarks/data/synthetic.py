"""The synthetic long-tailed task of :mod:`dirloss.demo` as :class:`Splits`."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.data.splits import Splits

__all__ = ["synthetic"]


def synthetic(
    train_size: int = 8000,
    val_size: int = 2000,
    test_size: int = 4000,
    *,
    num_features: int = 16,
    noise: float = 0.1,
    seed: int = 0,
) -> Splits:
    r"""The long-tailed task of :func:`dirloss.demo.make_long_tailed_regression`.

    Training labels are long-tailed on [0, 100]; validation and test labels are uniform
    (balanced, as DIR test sets are built). All splits share the feature map (same ``seed``);
    the validation samples are drawn after the test samples, so the two do not overlap.
    Targets are returned in label units divided by 100 (so in [0, 1]): ``y_std = 100``,
    ``y_mean = 0`` — :meth:`Splits.unscale` gives labels back.
    """
    from dirloss.demo import make_long_tailed_regression

    x_tr, y_tr = make_long_tailed_regression(
        train_size, num_features=num_features, noise=noise, seed=seed
    )
    x_te, y_te = make_long_tailed_regression(
        test_size, num_features=num_features, balanced=True, noise=noise, seed=seed
    )
    # The public generator ties the samples' seed to the map's seed, so the validation split
    # is the tail of a longer balanced draw: same feature map, labels drawn after the test's.
    x_all, y_all = make_long_tailed_regression(
        test_size + val_size, num_features=num_features, balanced=True, noise=noise, seed=seed
    )
    x_va, y_va = x_all[test_size:], y_all[test_size:]
    scale = 100.0

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).numpy().copy()

    return Splits(
        name="synthetic",
        x_train=f32(x_tr),
        y_train=f32(y_tr / scale),
        x_val=f32(x_va),
        y_val=f32(y_va / scale),
        x_test=f32(x_te),
        y_test=f32(y_te / scale),
        y_mean=0.0,
        y_std=scale,
        info={"label_range": (0.0, 100.0), "seed": seed},
    )
