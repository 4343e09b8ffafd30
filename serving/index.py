"""Approximate top-k over a large catalogue: a faiss IVF index shipped in the model bundle.

Exact scoring costs num_items x hidden multiply-adds per request (64 M at 10^6 items and
hidden 64) and grows with the catalogue; an inverted-file index (IVF, inner product)
scans only the `nprobe` lists nearest the user's vector. It is built when the bundle is
written (training's end, `build_bundle_index`), from the very item table the exact scorer
uses (`SASRec.item_table()`: own vectors plus attribute means), so both answer the same
question. Its nprobe is raised until recall@10 against exact search, on the vectors of
held-out users, reaches `ItemIndexConfig.target_recall`; the recall reached is written
next to the index (`item_index.json`), copied into the registry manifest at push, and
infra validation refuses a bundle whose index is below `min_index_recall`.

Two files: `item_index.faiss` (faiss.serialize_index's bytes: faiss's own binary format,
nothing is unpickled) and `item_index.json` (what it is, its size and sha256, its recall).
Both are bundle files, so the registry's manifest lists and verifies them like the
weights; the loader checks the JSON first, then the index file's size and sha256 against
it, then that the index matches the model (item count, width, metric) before it is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recpipe.core.config import clip, describe_error
from recpipe.features.sequences import PAD, Features, pad_history
from recpipe.training.config import ItemIndexConfig
from recpipe.training.model import BundleError, ModelBundle

INDEX_FILE = "item_index.faiss"
INDEX_META_FILE = "item_index.json"
MAX_META_BYTES = 64 * 1024
RECALL_K = 10
_OVERHEAD_BYTES = 1 << 20  # faiss headers, list sizes, centroids are bounded separately


class IndexMeta(BaseModel):
    """item_index.json: what the index is and how good it was when it was built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = 1
    kind: Literal["ivf_flat_ip"] = "ivf_flat_ip"
    num_items: int = Field(ge=1, le=100_000_000)
    hidden_dim: int = Field(ge=1, le=8192)
    nlist: int = Field(ge=1, le=1_000_000)
    nprobe: int = Field(ge=1, le=1_000_000)
    recall_at_10: float = Field(ge=0, le=1)
    recall_queries: int = Field(ge=1)
    target_recall: float = Field(gt=0, le=1)
    build_seconds: float = Field(ge=0)
    faiss_version: str = Field(max_length=40)
    index_bytes: int = Field(ge=1)
    index_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def manifest_entry(self) -> dict[str, float | int | str]:
        """What the registry manifest records of the index."""
        return {
            "kind": self.kind,
            "recall_at_10": self.recall_at_10,
            "recall_queries": self.recall_queries,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "num_items": self.num_items,
            "index_bytes": self.index_bytes,
        }


def max_index_bytes(num_items: int, hidden_dim: int, nlist: int) -> int:
    """The most an IVF-Flat index of this shape can weigh: vectors, ids, centroids."""
    return num_items * (4 * hidden_dim + 8) + nlist * (4 * hidden_dim + 64) + _OVERHEAD_BYTES


def item_vectors(bundle: ModelBundle) -> np.ndarray:
    """[num_items, H] float32: the exact scorer's item table without PAD (row i = item i+1)."""
    with torch.no_grad():
        table = bundle.model.item_table()[1:].detach().float().cpu()
    return np.ascontiguousarray(table.numpy())


@torch.no_grad()
def user_vectors(bundle: ModelBundle, histories: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    """[B, H] float32: the model's state after each encoded history (what is scored)."""
    model = bundle.model
    length = max(1, min(bundle.max_len, max(len(h) for h in histories)))
    batch = torch.from_numpy(np.stack([pad_history(h, length) for h in histories]))
    device = next(model.parameters()).device
    hidden = model.encode(batch.to(device))[:, -1, :]
    return np.ascontiguousarray(hidden.float().cpu().numpy())


def exact_top_k(vectors: np.ndarray, items: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
    """[Q, k] row indices of `items` with the highest inner products (chunked: Q x N
    scores at once would be 4 GB for 1,000 queries over 10^6 items)."""
    table = torch.from_numpy(items)
    out = []
    for start in range(0, len(vectors), chunk):
        scores = torch.from_numpy(vectors[start : start + chunk]) @ table.T
        out.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(out)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top-k found by the approximate search."""
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True))
    return hits / exact.size


def default_nlist(num_items: int) -> int:
    """faiss's guideline, 4 sqrt(N) lists, and at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(num_items)), num_items // 39))


def build_index(
    items: np.ndarray, queries: np.ndarray, config: ItemIndexConfig, seed: int = 0
) -> tuple[faiss.Index, IndexMeta]:
    """IVF-Flat (inner product) over `items`, nprobe doubled until recall@10 against exact
    search on `queries` reaches the target (or max_nprobe / nlist)."""
    t0 = time.monotonic()
    n, d = items.shape
    nlist = min(config.nlist or default_nlist(n), n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = items if n <= 64 * nlist else items[rng.choice(n, 64 * nlist, replace=False)]
    index.train(np.ascontiguousarray(sample))
    index.add(items)
    k = min(RECALL_K, n)
    exact = exact_top_k(queries, items, k)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = recall_at(found, exact)
        nxt = min(nprobe * 2, nlist, config.max_nprobe)
        if recall >= config.target_recall or nxt == nprobe:
            break
        nprobe = nxt
    data = serialize(index)
    meta = IndexMeta(
        num_items=n,
        hidden_dim=d,
        nlist=nlist,
        nprobe=nprobe,
        recall_at_10=round(recall, 4),
        recall_queries=len(queries),
        target_recall=config.target_recall,
        build_seconds=round(time.monotonic() - t0, 2),
        faiss_version=faiss.__version__,
        index_bytes=len(data),
        index_sha256=hashlib.sha256(data).hexdigest(),
    )
    return index, meta


def serialize(index: faiss.Index) -> bytes:
    return bytes(faiss.serialize_index(index).tobytes())


def held_out_histories(features: Features, count: int, seed: int) -> list[np.ndarray]:
    """Histories of up to `count` evaluated users before their test item (not trained on
    as a whole): the vectors recall is measured on."""
    histories, _ = features.split("test")
    histories = [h for h in histories if len(h)]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(histories), min(count, len(histories)), replace=False)
    return [histories[int(i)] for i in sorted(picked)]


def build_bundle_index(
    bundle: ModelBundle, features: Features, config: ItemIndexConfig, directory: Path, seed: int = 0
) -> IndexMeta | None:
    """Build and write the index next to a saved bundle when the catalogue is large
    enough (`config.min_items`); None when none is built."""
    num_items = len(bundle.vocab)
    if config.min_items is None or num_items < config.min_items:
        return None
    histories = held_out_histories(features, config.recall_queries, seed)
    if not histories:
        raise ValueError("no evaluated user to measure the item index's recall on")
    queries = np.concatenate(
        [user_vectors(bundle, histories[i : i + 256]) for i in range(0, len(histories), 256)]
    )
    index, meta = build_index(item_vectors(bundle), queries, config, seed)
    write_index(directory, index, meta)
    return meta


def write_index(directory: Path, index: faiss.Index, meta: IndexMeta) -> None:
    """The index first, its JSON last: a JSON names only a complete index file."""
    data = serialize(index)
    if len(data) != meta.index_bytes or hashlib.sha256(data).hexdigest() != meta.index_sha256:
        raise ValueError("the index changed since its metadata was made")
    (directory / INDEX_FILE).write_bytes(data)
    (directory / INDEX_META_FILE).write_text(meta.model_dump_json(indent=2), encoding="utf-8")


def read_meta(directory: Path) -> IndexMeta | None:
    """The index's checked metadata, or None when the bundle has no index."""
    path = directory / INDEX_META_FILE
    if not path.is_file():
        if (directory / INDEX_FILE).exists():
            raise BundleError(f"{INDEX_FILE} without {INDEX_META_FILE}")
        return None
    if path.stat().st_size > MAX_META_BYTES:
        raise BundleError(f"{INDEX_META_FILE}: larger than {MAX_META_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{INDEX_META_FILE}: not JSON ({clip(str(exc), 200)})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{INDEX_META_FILE}: expected a JSON object")
    try:
        return IndexMeta.model_validate(data)
    except ValidationError as exc:
        raise BundleError(clip(describe_error(exc, INDEX_META_FILE, "index metadata"), 1000)) from None


def manifest_entry(directory: Path) -> dict[str, float | int | str] | None:
    """What the registry manifest records of a bundle's index (None: it has none)."""
    meta = read_meta(directory)
    return None if meta is None else meta.manifest_entry()


@dataclass
class ItemIndex:
    """A loaded index and its metadata; ids are vocabulary indices (faiss id + 1)."""

    index: faiss.Index
    meta: IndexMeta

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """[B, k] scores and vocabulary indices (0 where the index found fewer than k)."""
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return scores, np.where(ids >= 0, ids + 1, PAD)


def load_index(directory: Path, bundle: ModelBundle) -> ItemIndex | None:
    """The bundle's index, checked against its metadata and the model; None if it has
    none. BundleError names what does not match."""
    meta = read_meta(directory)
    if meta is None:
        return None
    arch = bundle.model.arch
    if (meta.num_items, meta.hidden_dim) != (arch.num_items, arch.hidden_dim):
        raise BundleError(
            f"{INDEX_META_FILE}: an index of {meta.num_items} items x {meta.hidden_dim} dims "
            f"for a model of {arch.num_items} x {arch.hidden_dim}"
        )
    path = directory / INDEX_FILE
    if not path.is_file():
        raise BundleError(f"{INDEX_META_FILE} names {INDEX_FILE}, which is missing")
    size = path.stat().st_size
    limit = max_index_bytes(meta.num_items, meta.hidden_dim, meta.nlist)
    if size != meta.index_bytes or size > limit:
        raise BundleError(
            f"{INDEX_FILE}: {size:,} bytes, but {INDEX_META_FILE} records {meta.index_bytes:,} "
            f"(at most {limit:,} for its shape)"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.index_sha256:
        raise BundleError(f"{INDEX_FILE}: its sha256 is not the one {INDEX_META_FILE} records")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise BundleError(f"{INDEX_FILE}: not a faiss index ({clip(str(exc), 200)})") from None
    if (
        index.ntotal != meta.num_items
        or index.d != meta.hidden_dim
        or index.metric_type != faiss.METRIC_INNER_PRODUCT
    ):
        raise BundleError(f"{INDEX_FILE}: its size, width or metric is not its metadata's")
    faiss.extract_index_ivf(index).nprobe = meta.nprobe
    return ItemIndex(index, meta)


def top_k_with_index(
    bundle: ModelBundle,
    index: ItemIndex,
    histories: Sequence[Sequence[int]],
    excluded: Sequence[set[int]],
    ks: Sequence[int],
) -> list[tuple[list[int], list[float]]]:
    """Per query, the top-k (vocabulary indices, scores) by the index, never an excluded
    item: it over-fetches k + |excluded| and filters, so exclusion cannot shorten a list.
    A row the index cannot fill (probed lists too small) is scored exactly instead."""
    vectors = user_vectors(bundle, histories)
    fetch = min(max(k + len(e) for k, e in zip(ks, excluded, strict=True)), index.meta.num_items)
    scores, ids = index.search(vectors, fetch)
    out: list[tuple[list[int], list[float]]] = []
    for row, (k, skip) in enumerate(zip(ks, excluded, strict=True)):
        picked_ids: list[int] = []
        picked_scores: list[float] = []
        for i, s in zip(ids[row].tolist(), scores[row].tolist(), strict=True):
            if i != PAD and i not in skip and s == s:
                picked_ids.append(i)
                picked_scores.append(float(s))
                if len(picked_ids) == k:
                    break
        want = min(k, index.meta.num_items - len(skip - {PAD}))
        if len(picked_ids) < want:
            exact = torch.from_numpy(vectors[row]) @ torch.from_numpy(item_vectors(bundle)).T
            if skip:
                exact[torch.tensor([i - 1 for i in skip if i != PAD], dtype=torch.long)] = float(
                    "-inf"
                )
            exact = torch.nan_to_num(exact, nan=float("-inf"))
            top = torch.topk(exact, want)
            picked_ids = [i + 1 for i in top.indices.tolist()]
            picked_scores = top.values.tolist()
        out.append((picked_ids, picked_scores))
    return out
