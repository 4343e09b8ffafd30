"""Sequential recommenders over the last N items, scoring every item.

Two encoders share the embeddings, the masking and the tied output:

- `ENCODER_SASREC` (1): SASRec (Kang & McAuley, ICDM 2018), pre-LayerNorm causal
  self-attention blocks. Every bundle written before the filter encoder existed is this one.
- `ENCODER_FILTER` (2): BSARec's block (Shin et al., AAAI 2024): each layer mixes
  `alpha * frequency filter + (1 - alpha) * self-attention`, post-LayerNorm, embeddings
  layer-normalised. BSARec's filter is an FFT over the whole padded window, which is not
  causal: it is only right there because BSARec trains and predicts at the last position.
  We train on every position of a sequence at once, where such a filter would show each
  position the items it must predict. So the filter here is the causal equivalent: at
  position t, the output BSARec's filter gives at the last position of a window ending at
  t (a fixed causal convolution, `causal_lowpass`). At the last position of a full window
  it equals BSARec's filter exactly; no position sees a later item.

Both are trained with full softmax cross-entropy over the whole catalogue. Output
embeddings are tied to the input item embeddings. With item attributes, an item's embedding
is its own vector plus the mean of its attributes' vectors (as in feature-fused SASRec
variants), on both sides.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import pickle
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recpipe.core.config import clip
from recpipe.features.attributes import ItemAttributes
from recpipe.features.sequences import PAD, VOCAB_FILE, Vocabulary, pad_history
from recpipe.training.config import TrainConfig

WEIGHTS_FILE = "model.pt"
ARCH_FILE = "model_config.json"
POPULARITY_FILE = "popularity.json"  # optional: bundles from before it have none

# What a bundle file may weigh, checked before it is read: a bundle comes from storage,
# and a file that is too large is refused before it costs memory.
MAX_FILE_BYTES = {
    ARCH_FILE: 64 * 1024,
    VOCAB_FILE: 1024**3,
    POPULARITY_FILE: 64 * 1024**2,
    WEIGHTS_FILE: 16 * 1024**3,
}
# Enough popular items for any request: k (ServingConfig.max_k <= 10,000) after an
# `exclude` list (max_exclude <= 10,000) has taken its share.
POPULAR_LIMIT = 20_000
_SHOWN = 200  # characters of a foreign message quoted in an error


class BundleError(ValueError):
    """A model bundle that cannot be used; the message names the file and the problem."""


# Bounds of every architecture field: a hostile or corrupt model_config.json must not make
# the loader allocate a model larger than any we train (the weights file is checked too).
_ARCH_BOUNDS: dict[str, tuple[int, int]] = {
    "num_items": (1, 100_000_000),
    "max_len": (1, 8192),
    "hidden_dim": (1, 8192),
    "num_layers": (0, 64),
    "num_heads": (1, 256),
    "num_attributes": (0, 10_000_000),
    "num_attribute_links": (0, 1_000_000_000),
    "encoder": (1, 2),
    "filter_cutoff": (0, 8192),
    "relative_positions": (0, 1),
    "whole_window": (0, 1),
}
_FLOAT_BOUNDS: dict[str, tuple[float, float, bool]] = {  # name: (low, high, high included)
    "dropout": (0.0, 1.0, False),
    "filter_alpha": (0.0, 1.0, True),
}
ENCODER_SASREC = 1
ENCODER_FILTER = 2


@dataclass(frozen=True)
class Architecture:
    num_items: int
    max_len: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    dropout: float
    num_attributes: int = 0  # 0: no attribute embeddings (bundles from before attributes)
    num_attribute_links: int = 0  # (item, attribute) pairs
    # Fields below default to what bundles from before them were: plain SASRec.
    encoder: int = ENCODER_SASREC  # ENCODER_SASREC or ENCODER_FILTER (numbers: checkpoints)
    filter_alpha: float = 0.0  # weight of the frequency filter against attention
    filter_cutoff: int = 0  # BSARec's c: the filter keeps rfft bins 0..c // 2
    # 1: no position embeddings; attention gets a learned bias per head and distance
    # instead, so position t sees its history exactly as a prediction after it would.
    relative_positions: int = 0
    # 1: BSARec's own filter, a low-pass over the whole (zero-padded) input window, so an
    # earlier position sees later input items: only for models trained at the last position.
    whole_window: int = 0

    @classmethod
    def from_dict(cls, data: Any, source: str = ARCH_FILE) -> Architecture:
        """Validated: known fields only, integers within bounds, heads dividing the width."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(str(k) for k in data if k not in known):
            raise BundleError(f"{source}: unknown field(s) {clip(str(unknown[:5]), _SHOWN)}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING:
                    raise BundleError(f"{source}: field '{f.name}' is missing")
                continue
            v = data[f.name]
            if f.name in _FLOAT_BOUNDS:
                lo_f, hi_f, closed = _FLOAT_BOUNDS[f.name]
                if (
                    not isinstance(v, int | float)
                    or isinstance(v, bool)
                    or not (lo_f <= v <= hi_f if closed else lo_f <= v < hi_f)
                ):
                    raise BundleError(
                        f"{source}: '{f.name}' must be a number in [{lo_f:g}, {hi_f:g}"
                        f"{']' if closed else ')'}"
                    )
                v = float(v)
            else:
                lo, hi = _ARCH_BOUNDS[f.name]
                if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                    raise BundleError(
                        f"{source}: '{f.name}' must be an integer in {lo}..{hi}, "
                        f"got {clip(repr(v), 40)}"
                    )
            values[f.name] = v
        arch = cls(**values)
        if arch.hidden_dim % arch.num_heads:
            raise BundleError(f"{source}: hidden_dim is not a multiple of num_heads")
        if arch.encoder == ENCODER_FILTER and arch.filter_cutoff < 1:
            raise BundleError(f"{source}: the filter encoder needs filter_cutoff >= 1")
        return arch


def model_fields(config: TrainConfig) -> dict[str, Any]:
    """The encoder's Architecture fields for a TrainConfig (plain SASRec leaves them at
    their defaults, so its bundles read exactly as before)."""
    if config.encoder == "sasrec":
        return {}
    return {
        "encoder": ENCODER_FILTER,
        "filter_alpha": config.filter_alpha,
        "filter_cutoff": config.filter_cutoff,
        "relative_positions": int(config.relative_positions),
        "whole_window": int(config.filter_window == "whole"),
    }


def lowpass_matrix(length: int, cutoff: int) -> torch.Tensor:
    """[length, length] BSARec's low-pass filter as a matrix: rfft over the sequence axis
    (orthonormal), keep bins 0..cutoff // 2, irfft. `lowpass_matrix(L, c) @ x` equals
    BSARec's `low_pass` for x of shape [L, H]. Circulant, so not causal."""
    eye = torch.eye(length, dtype=torch.float64)
    spectrum = torch.fft.rfft(eye, dim=0, norm="ortho")
    spectrum[cutoff // 2 + 1 :] = 0
    return torch.fft.irfft(spectrum, n=length, dim=0, norm="ortho").float()


def causal_lowpass(length: int, cutoff: int) -> torch.Tensor:
    """[length, length] lower-triangular Toeplitz matrix: row t is what BSARec's filter
    gives at the last position of a `length`-long window ending at t (earlier positions
    outside the sequence being zero). Depends on t - s only, so any leading square
    block is the same filter for a shorter (trimmed, left-padded) input."""
    kernel = lowpass_matrix(length, cutoff)[-1].flip(0)  # kernel[d]: weight of x[t - d]
    lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    return torch.where(lag >= 0, kernel[lag.clamp(min=0)], torch.zeros(()))


class Block(nn.Module):
    """Pre-LayerNorm transformer block; attention masked by an explicit `allowed` matrix."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 4 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden, hidden),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, hidden = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, length, hidden)))
        return x + self.drop(self.ff(self.ln2(x)))


class FilterBlock(nn.Module):
    """BSARec's block with the causal filter: alpha * LN(x + drop(low + beta^2 * high))
    + (1 - alpha) * LN(x + drop(attention)), then LN(h + drop(feed-forward(h)))."""

    def __init__(self, hidden: int, heads: int, dropout: float, alpha: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.alpha = alpha
        self.sqrt_beta = nn.Parameter(torch.randn(1, 1, hidden))
        self.filter_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)
        )
        self.ff_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        for linear in (self.qkv, self.proj, self.ff[0], self.ff[2]):
            assert isinstance(linear, nn.Linear)
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, lowpass: torch.Tensor
    ) -> torch.Tensor:
        b, length, hidden = x.shape
        low = lowpass @ x
        dsp = self.filter_norm(x + self.drop(low + self.sqrt_beta**2 * (x - low)))
        qkv = self.qkv(x).view(b, length, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        gsp = self.attn_norm(
            x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, length, hidden)))
        )
        h = self.alpha * dsp + (1 - self.alpha) * gsp
        return self.ff_norm(h + self.drop(self.ff(h)))


class SASRec(nn.Module):
    """Item + position embeddings, causal blocks, tied output embeddings.

    Inputs are right-aligned (left-padded) and may be shorter than max_len: positions count
    back from the most recent item and padding is masked out of attention, so trimming the
    padding changes nothing but the cost.
    """

    def __init__(self, arch: Architecture, attributes: ItemAttributes | None = None) -> None:
        super().__init__()
        self.arch = arch
        h = arch.hidden_dim
        self.item_emb = nn.Embedding(arch.num_items + 1, h, padding_idx=PAD)
        self.attr_emb: nn.EmbeddingBag | None = None
        self.attr_values: torch.Tensor
        self.attr_offsets: torch.Tensor
        if arch.num_attributes:
            self.attr_emb = nn.EmbeddingBag(arch.num_attributes, h, mode="mean")
            nn.init.normal_(self.attr_emb.weight, std=0.02)
            values = torch.zeros(arch.num_attribute_links, dtype=torch.long)
            offsets = torch.zeros(arch.num_items + 1, dtype=torch.long)
            if attributes is not None:
                if (attributes.num_attributes, attributes.num_links) != (
                    arch.num_attributes,
                    arch.num_attribute_links,
                ) or len(attributes.offsets) != arch.num_items + 2:
                    raise ValueError("item attributes do not match the architecture")
                values = torch.from_numpy(attributes.values.astype(np.int64))
                offsets = torch.from_numpy(attributes.offsets[:-1].astype(np.int64))
            # persistent: the bundle carries the table, serving needs nothing else
            self.register_buffer("attr_values", values)
            self.register_buffer("attr_offsets", offsets)
        self._table_cache: tuple[tuple[int, ...], torch.Tensor] | None = None
        self.pos_emb: nn.Embedding | None = None
        self.rel_bias: nn.Parameter | None = None
        if arch.relative_positions:
            self.rel_bias = nn.Parameter(torch.zeros(arch.num_heads, arch.max_len))
        else:
            self.pos_emb = nn.Embedding(arch.max_len, h)
            nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.emb_dropout = nn.Dropout(arch.dropout)
        self.filtered = arch.encoder == ENCODER_FILTER
        self.blocks: nn.ModuleList
        # post-LN blocks normalise their output; pre-LN ones need a final norm (and the
        # filter encoder normalises its input instead). Same attribute, same state keys.
        self.final_norm = nn.LayerNorm(h, eps=1e-12 if self.filtered else 1e-5)
        self.lowpass: torch.Tensor
        if self.filtered:
            self.blocks = nn.ModuleList(
                FilterBlock(h, arch.num_heads, arch.dropout, arch.filter_alpha)
                for _ in range(arch.num_layers)
            )
            lowpass = (
                lowpass_matrix(arch.max_len, arch.filter_cutoff)
                if arch.whole_window
                else causal_lowpass(arch.max_len, arch.filter_cutoff)
            )
        else:
            self.blocks = nn.ModuleList(
                Block(h, arch.num_heads, arch.dropout) for _ in range(arch.num_layers)
            )
            lowpass = torch.zeros(0, 0)
        self.register_buffer("lowpass", lowpass, persistent=False)  # derived from arch
        self.causal: torch.Tensor
        causal = torch.tril(torch.ones(arch.max_len, arch.max_len, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)
        self.lag: torch.Tensor
        lag = torch.arange(arch.max_len)[:, None] - torch.arange(arch.max_len)[None, :]
        self.register_buffer("lag", lag, persistent=False)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def item_table(self) -> torch.Tensor:
        """[num_items + 1, H] item vectors (own + mean of attributes) for input and output.

        Without gradients (evaluation, serving) the table is cached until a weight changes
        (in-place updates bump a tensor's version, moves change its storage)."""
        if self.attr_emb is None:
            return self.item_emb.weight
        if torch.is_grad_enabled():
            return self._compute_table()
        watched = (self.item_emb.weight, self.attr_emb.weight, self.attr_values, self.attr_offsets)
        key = tuple(x for t in watched for x in (t._version, t.data_ptr()))
        if self._table_cache is None or self._table_cache[0] != key:
            self._table_cache = (key, self._compute_table())
        return self._table_cache[1]

    def _compute_table(self) -> torch.Tensor:
        assert self.attr_emb is not None
        return self.item_emb.weight + self.attr_emb(self.attr_values, self.attr_offsets)

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, L<=max_len] left-padded item indices -> [B, L, H] hidden states."""
        return self._encode(seqs, self.item_table())

    def _encode(self, seqs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        length = seqs.shape[1]
        if length > self.arch.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.arch.max_len}")
        keep = seqs != PAD
        causal = self.causal[:length, :length]
        # attend to earlier real items, and always to oneself (so padding rows stay finite)
        allowed = (causal[None] & keep[:, None, :]) | torch.eye(
            length, dtype=torch.bool, device=seqs.device
        )[None]
        allowed = allowed.unsqueeze(1)
        x = F.embedding(seqs, table)
        if not self.filtered:
            x = x * (self.arch.hidden_dim**0.5)
        if self.rel_bias is not None:
            lag = (self.lag[:length, :length]).clamp(min=0)
            bias = self.rel_bias[:, lag]  # [heads, L, L]: by distance back from the query
            allowed = torch.where(allowed, bias[None], float("-inf"))
        if self.pos_emb is not None:
            positions = torch.arange(
                self.arch.max_len - length, self.arch.max_len, device=seqs.device
            )
            x = x + self.pos_emb(positions)[None]
        if self.filtered:
            # BSARec: LN(item + position), no sqrt(H) scale; post-LN blocks. Padding rows
            # are zero between blocks, so they add nothing to the filter's sums.
            x = self.final_norm(x)
            x = self.emb_dropout(x) * keep.unsqueeze(-1)
            # causal: any leading block is the same filter; whole window: the input sits at
            # the end of a zero-padded max_len window, so only its last rows and columns act
            lowpass = (
                self.lowpass[-length:, -length:]
                if self.arch.whole_window
                else self.lowpass[:length, :length]
            )
            for block in self.blocks:
                x = block(x, allowed, lowpass) * keep.unsqueeze(-1)
            return x
        x = self.emb_dropout(x) * keep.unsqueeze(-1)
        for block in self.blocks:
            x = block(x, allowed) * keep.unsqueeze(-1)
        return self.final_norm(x) * keep.unsqueeze(-1)

    def logits(self, hidden: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Scores over all items (column 0 = PAD, always -inf)."""
        out = hidden @ (self.item_table() if table is None else table).T
        out[..., PAD] = float("-inf")
        return out

    def score_last(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, num_items + 1] scores for the next item after each history."""
        table = self.item_table()
        return self.logits(self._encode(seqs, table)[:, -1, :], table)

    def training_logits(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits at every non-padding target position (one item table per batch)."""
        table = self.item_table()
        hidden = self._encode(seqs, table)
        return self.logits(hidden[targets != PAD], table)


def exclude_history(scores: torch.Tensor, histories: Sequence[Sequence[int] | np.ndarray]) -> None:
    """Set items already seen to -inf in place: they are never recommended or ranked."""
    rows = [i for i, h in enumerate(histories) for _ in range(len(h))]
    cols = [int(c) for h in histories for c in h]
    if rows:
        scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")


@dataclass(frozen=True)
class Popularity:
    """The training data's most popular items, most popular first (vocabulary indices and
    interaction counts): the defined answer to a request the model cannot personalise."""

    indices: tuple[int, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_counts(
        cls, counts: np.ndarray | Sequence[float], limit: int = POPULAR_LIMIT
    ) -> Popularity:
        """From per-index counts (index 0 = PAD, as `Features.popularity` returns them);
        ties keep vocabulary order, items never seen are left out."""
        c = np.asarray(counts, dtype=np.float64)
        c = np.where(np.isfinite(c), c, 0.0)
        c[0] = 0.0
        order = np.lexsort((np.arange(len(c)), -c))
        order = order[c[order] > 0][:limit]
        return cls(tuple(int(i) for i in order), tuple(int(c[i]) for i in order))

    def to_json(self, vocab: Vocabulary) -> str:
        return json.dumps({"items": vocab.decode(self.indices), "counts": list(self.counts)})

    @classmethod
    def from_json(cls, text: str, vocab: Vocabulary, source: str = POPULARITY_FILE) -> Popularity:
        """Validated against the bundle's vocabulary; errors name the file."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"{source}: not valid JSON ({clip(str(exc), _SHOWN)})") from None
        if not isinstance(data, dict) or set(data) != {"items", "counts"}:
            raise BundleError(f"{source}: expected an object with 'items' and 'counts'")
        items, counts = data["items"], data["counts"]
        if not isinstance(items, list) or not isinstance(counts, list):
            raise BundleError(f"{source}: 'items' and 'counts' must be lists")
        if len(items) != len(counts) or len(items) > POPULAR_LIMIT:
            raise BundleError(
                f"{source}: {len(items)} items and {len(counts)} counts; "
                f"expected equal lengths of at most {POPULAR_LIMIT}"
            )
        indices = []
        for i, item in enumerate(items):
            idx = vocab.index_of(item) if isinstance(item, str) else None
            if idx is None:
                raise BundleError(f"{source}: items[{i}] is not in the bundle's vocabulary")
            indices.append(idx)
        if len(set(indices)) != len(indices):
            raise BundleError(f"{source}: items repeat")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts):
            raise BundleError(f"{source}: counts must be positive integers")
        if any(a < b for a, b in itertools.pairwise(counts)):
            raise BundleError(f"{source}: counts must not increase (most popular first)")
        return cls(tuple(indices), tuple(counts))


def _read_text(path: Path) -> str:
    """A bundle file's text, its size checked before it is read."""
    _check_size(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{path.name}: not UTF-8 text") from None


def _check_size(path: Path) -> int:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES[path.name]:
        raise BundleError(
            f"{path.name}: {size:,} bytes, above the limit of {MAX_FILE_BYTES[path.name]:,}"
        )
    return size


def _json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise BundleError(f"{path.name}: not valid JSON ({clip(str(exc), _SHOWN)})") from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ModelBundle:
    """A trained model with its vocabulary (and, for cold-start answers, the training
    data's most popular items): what training writes and serving loads.

    Nothing in a bundle is unpickled: the weights are read with `torch.load(...,
    weights_only=True)` (tensors only, no code), everything else is JSON, and every file's
    size and content is checked before the model is built.
    """

    def __init__(
        self, model: SASRec, vocab: Vocabulary, popularity: Popularity | None = None
    ) -> None:
        if model.arch.num_items != len(vocab):
            raise ValueError(
                f"model has {model.arch.num_items} items but vocabulary has {len(vocab)}"
            )
        if popularity is not None and any(not 1 <= i <= len(vocab) for i in popularity.indices):
            raise ValueError("popularity names items outside the vocabulary")
        self.model = model.eval()
        self.vocab = vocab
        self.popularity = popularity

    @property
    def max_len(self) -> int:
        return self.model.arch.max_len

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        weights = io.BytesIO()
        torch.save(self.model.state_dict(), weights)
        _write_atomic(directory / WEIGHTS_FILE, weights.getvalue())
        _write_atomic(directory / ARCH_FILE, json.dumps(asdict(self.model.arch), indent=2).encode())
        _write_atomic(directory / VOCAB_FILE, self.vocab.to_json().encode("utf-8"))
        if self.popularity is not None:
            _write_atomic(
                directory / POPULARITY_FILE, self.popularity.to_json(self.vocab).encode("utf-8")
            )

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> ModelBundle:
        """Read and check a bundle; a bad one raises BundleError naming the file."""
        for name in (WEIGHTS_FILE, ARCH_FILE, VOCAB_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"model bundle {directory} lacks {name}")
        arch = Architecture.from_dict(_json(directory / ARCH_FILE))  # new fields default
        weights = directory / WEIGHTS_FILE
        size = _check_size(weights)
        # The item table alone is in the file (at >= 2 bytes a value): a config that claims
        # a larger model than its weights is refused before the model is allocated.
        if (arch.num_items + 1) * arch.hidden_dim * 2 > size:
            raise BundleError(
                f"{ARCH_FILE} describes {arch.num_items} items x {arch.hidden_dim} dims, "
                f"more than {WEIGHTS_FILE} ({size:,} bytes) holds"
            )
        state = _load_weights(weights, device)
        model = SASRec(arch)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(
                f"{WEIGHTS_FILE} does not match {ARCH_FILE}: {clip(str(exc), _SHOWN)}"
            ) from None
        vocab = _vocabulary(directory / VOCAB_FILE)
        if len(vocab) != arch.num_items:
            raise BundleError(
                f"{VOCAB_FILE}: the vocabulary has {len(vocab)} items but {ARCH_FILE} says "
                f"{arch.num_items}"
            )
        popularity = None
        if (directory / POPULARITY_FILE).is_file():
            popularity = Popularity.from_json(_read_text(directory / POPULARITY_FILE), vocab)
        return cls(model.to(device), vocab, popularity)

    @torch.no_grad()
    def score_encoded(self, histories: Sequence[Sequence[int] | np.ndarray]) -> torch.Tensor:
        """Scores over all items for encoded histories, history items excluded."""
        device = next(self.model.parameters()).device
        length = max(1, min(self.max_len, max(len(h) for h in histories)))
        batch = np.stack([pad_history(h, length) for h in histories])
        scores = self.model.score_last(torch.from_numpy(batch).to(device)).float().cpu()
        exclude_history(scores, histories)
        return scores


def _load_weights(path: Path, device: str) -> dict[str, torch.Tensor]:
    """Tensors only: `weights_only=True` refuses any pickled object that is not a tensor
    or a plain container, without running it."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(
            f"{path.name}: not a plain tensor file, refused without loading it ({clip(first, _SHOWN)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(f"{path.name}: expected a state dict of named tensors")
    return state


def _vocabulary(path: Path) -> Vocabulary:
    data = _json(path)
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise BundleError(f"{path.name}: expected an object with an 'items' list")
    items = data["items"]
    if not all(isinstance(i, str) for i in items):
        raise BundleError(f"{path.name}: every item id must be a string")
    try:
        return Vocabulary(tuple(items))
    except ValueError as exc:
        raise BundleError(f"{path.name}: {clip(str(exc), _SHOWN)}") from None
