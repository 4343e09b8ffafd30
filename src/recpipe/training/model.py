"""SASRec: causal self-attention over the last N items, scoring every item.

Kang & McAuley (ICDM 2018), trained here with full softmax cross-entropy over the whole
catalogue (the known lever over one sampled negative). Output embeddings are tied to the
input item embeddings. With item attributes, an item's embedding is its own vector plus the
mean of its attributes' vectors (as in feature-fused SASRec variants), on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recpipe.features.attributes import ItemAttributes
from recpipe.features.sequences import PAD, VOCAB_FILE, Vocabulary, pad_history

WEIGHTS_FILE = "model.pt"
ARCH_FILE = "model_config.json"


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
        self.pos_emb = nn.Embedding(arch.max_len, h)
        self.emb_dropout = nn.Dropout(arch.dropout)
        self.blocks = nn.ModuleList(
            Block(h, arch.num_heads, arch.dropout) for _ in range(arch.num_layers)
        )
        self.final_norm = nn.LayerNorm(h)
        self.causal: torch.Tensor
        causal = torch.tril(torch.ones(arch.max_len, arch.max_len, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
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
        positions = torch.arange(self.arch.max_len - length, self.arch.max_len, device=seqs.device)
        keep = seqs != PAD
        x = F.embedding(seqs, table) * (self.arch.hidden_dim**0.5) + self.pos_emb(positions)[None]
        x = self.emb_dropout(x) * keep.unsqueeze(-1)
        causal = self.causal[:length, :length]
        # attend to earlier real items, and always to oneself (so padding rows stay finite)
        allowed = (causal[None] & keep[:, None, :]) | torch.eye(
            length, dtype=torch.bool, device=seqs.device
        )[None]
        allowed = allowed.unsqueeze(1)
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


class ModelBundle:
    """A trained model with its vocabulary: what training writes and serving loads."""

    def __init__(self, model: SASRec, vocab: Vocabulary) -> None:
        if model.arch.num_items != len(vocab):
            raise ValueError(
                f"model has {model.arch.num_items} items but vocabulary has {len(vocab)}"
            )
        self.model = model.eval()
        self.vocab = vocab

    @property
    def max_len(self) -> int:
        return self.model.arch.max_len

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / WEIGHTS_FILE)
        (directory / ARCH_FILE).write_text(json.dumps(asdict(self.model.arch), indent=2))
        (directory / VOCAB_FILE).write_text(self.vocab.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> ModelBundle:
        for name in (WEIGHTS_FILE, ARCH_FILE, VOCAB_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"model bundle {directory} lacks {name}")
        arch = Architecture(**json.loads((directory / ARCH_FILE).read_text()))  # new fields default
        model = SASRec(arch)
        state = torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state)
        vocab = Vocabulary.from_json((directory / VOCAB_FILE).read_text(encoding="utf-8"))
        return cls(model.to(device), vocab)

    @torch.no_grad()
    def score_encoded(self, histories: Sequence[Sequence[int] | np.ndarray]) -> torch.Tensor:
        """Scores over all items for encoded histories, history items excluded."""
        device = next(self.model.parameters()).device
        length = max(1, min(self.max_len, max(len(h) for h in histories)))
        batch = np.stack([pad_history(h, length) for h in histories])
        scores = self.model.score_last(torch.from_numpy(batch).to(device)).float().cpu()
        exclude_history(scores, histories)
        return scores
