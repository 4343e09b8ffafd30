"""Metrics on hand-made cases with known answers."""

import math

import numpy as np
import pytest

from recpipe.ranking import metrics


def test_ranks_from_scores_counts_higher_and_earlier_ties() -> None:
    scores = np.array(
        [
            [-np.inf, 0.9, 0.5, 0.7, 0.1],  # target 2: 0.9 and 0.7 are higher -> rank 2
            [-np.inf, 0.5, 0.5, 0.5, 0.0],  # target 3 ties with items 1 and 2 (lower idx) -> rank 2
            [-np.inf, 0.5, 0.5, 0.5, 0.0],  # target 1: tie but lowest index -> rank 0
            [-np.inf, -np.inf, 0.3, 0.2, 0.1],  # target 1 excluded (in history) -> -1
        ]
    )
    ranks = metrics.ranks_from_scores(scores, np.array([2, 3, 1, 1]))
    assert ranks.tolist() == [2, 2, 0, -1]


def test_hit_rate_ndcg_mrr_known_values() -> None:
    ranks = np.array([0, 1, 4, 9, 10, -1])
    assert metrics.hit_rate(ranks, 5) == pytest.approx(3 / 6)
    assert metrics.hit_rate(ranks, 10) == pytest.approx(4 / 6)
    expected_ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert metrics.ndcg(ranks, 10) == pytest.approx(expected_ndcg10)
    assert metrics.ndcg(ranks, 1) == pytest.approx(1 / 6)
    assert metrics.mrr(ranks, 5) == pytest.approx((1 + 1 / 2 + 1 / 5) / 6)


def test_ranking_metrics_keys_and_empty_input() -> None:
    out = metrics.ranking_metrics(np.array([0]), ks=(5, 10))
    assert out == {
        "hr@5": 1.0,
        "ndcg@5": 1.0,
        "mrr@5": 1.0,
        "hr@10": 1.0,
        "ndcg@10": 1.0,
        "mrr@10": 1.0,
    }
    assert metrics.ndcg(np.array([], dtype=int), 10) == 0.0


def test_ranks_from_topk_and_coverage() -> None:
    assert metrics.ranks_from_topk([["a", "b"], ["c", "d"]], ["b", "x"]).tolist() == [1, -1]
    assert metrics.catalog_coverage(np.array([[1, 2], [2, 3]]), 6) == pytest.approx(0.5)
