"""Ranking metrics as pure functions of ranks.

A rank is the 0-based position of the held-out item in the full ranking over all items,
history excluded; ties between equal scores are broken by item index (lower first), the
same order a stable top-k produces. Unrankable targets (unknown to a model) get rank -1
and count as misses.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

KS: tuple[int, ...] = (5, 10, 20)


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each row's target among that row's scores (-inf = excluded item).

    rank = #items scoring higher + #items scoring equal with a lower index.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    higher = (scores > target_scores).sum(axis=1)
    cols = np.arange(scores.shape[1])[None, :]
    ties_before = ((scores == target_scores) & (cols < targets[:, None])).sum(axis=1)
    ranks = higher + ties_before
    return np.where(np.isfinite(target_scores[:, 0]), ranks, -1).astype(np.int64)


def ranks_from_topk(topk: Iterable[Iterable[object]], targets: Iterable[object]) -> np.ndarray:
    """Rank of each target in its top-k list, -1 if absent."""
    out = []
    for items, target in zip(topk, targets, strict=True):
        items = list(items)
        out.append(items.index(target) if target in items else -1)
    return np.asarray(out, dtype=np.int64)


def _hit(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks >= 0) & (ranks < k)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    return float(_hit(ranks, k).mean()) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """One relevant item per user: DCG = 1/log2(rank+2); the ideal DCG is 1."""
    ranks = np.asarray(ranks)
    if not len(ranks):
        return 0.0
    gains = np.where(_hit(ranks, k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    if not len(ranks):
        return 0.0
    return float(np.where(_hit(ranks, k), 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0).mean())


def ranking_metrics(ranks: np.ndarray, ks: Iterable[int] = KS) -> dict[str, float]:
    """hr@k, ndcg@k and mrr@k for every k."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
        out[f"mrr@{k}"] = mrr(ranks, k)
    return out


def catalog_coverage(topk_indices: np.ndarray, num_items: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    if num_items <= 0:
        return 0.0
    return float(len(np.unique(np.asarray(topk_indices).ravel())) / num_items)
