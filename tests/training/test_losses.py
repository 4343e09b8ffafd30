"""Sampled softmax on hand-made cases: the correction, the masking, and the full-softmax limit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recpipe.training.config import TrainConfig
from recpipe.training.losses import (
    SampledSoftmax,
    expected_counts_log,
    sampled_logits,
    sampled_softmax_loss,
    training_loss,
    uses_sampled_loss,
)


def _case(seed: int = 0, items: int = 7, n: int = 5, h: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(items + 1, h, generator=g)
    table[0] = 0
    hidden = torch.randn(n, h, generator=g)
    positives = torch.randint(1, items + 1, (n,), generator=g)
    return table, hidden, positives


def test_log_q_is_subtracted_from_candidate_logits_not_from_the_positive() -> None:
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    hidden = torch.tensor([[2.0, 3.0]])
    candidates = torch.tensor([2, 3])
    log_q = torch.tensor([math.log(4.0), math.log(0.5)])
    logits = sampled_logits(hidden, torch.tensor([1]), candidates, log_q, table)
    # positive item 1: 2.0; item 2: 3.0 - log 4; item 3: 5.0 - log 0.5
    expected = torch.tensor([[2.0, 3.0 - math.log(4.0), 5.0 - math.log(0.5)]])
    assert torch.allclose(logits, expected)


def test_accidental_hits_and_pad_are_masked() -> None:
    table, hidden, _ = _case()
    positives = torch.tensor([3, 5, 3, 1, 2])
    candidates = torch.tensor([3, 0, 5, 6, 3])
    logits = sampled_logits(hidden, positives, candidates, torch.zeros(5), table)
    neg = logits[:, 1:]
    for row, p in enumerate(positives.tolist()):
        for col, c in enumerate(candidates.tolist()):
            assert math.isinf(neg[row, col]) == (c == p or c == 0)
    # the positive column stays finite: the positive is never its own negative
    assert torch.isfinite(logits[:, 0]).all()


def test_a_candidate_equal_to_the_positive_changes_nothing() -> None:
    table, hidden, _ = _case(1)
    positives = torch.full((5,), 3)  # every row's positive is item 3
    others = torch.tensor([1, 6])
    base = sampled_softmax_loss(hidden, positives, others, torch.zeros(len(others)), table)
    with_hits = torch.cat([others, torch.tensor([3, 3])])  # drawn twice: two masked columns
    hit = sampled_softmax_loss(hidden, positives, with_hits, torch.zeros(len(with_hits)), table)
    assert torch.allclose(base, hit)


def test_equals_full_softmax_when_the_candidates_are_the_whole_catalogue() -> None:
    table, hidden, positives = _case(2, items=9, n=6)
    everything = torch.arange(1, 10)
    # one uniform draw of each item: expected count 1, log q 0
    log_q = expected_counts_log(everything, 0, torch.zeros(10), 9, torch.full((10,), 1 / 9))
    assert torch.allclose(log_q, torch.zeros(9), atol=1e-6)
    sampled = sampled_softmax_loss(hidden, positives, everything, log_q, table)
    full_logits = hidden @ table.T
    full_logits[:, 0] = float("-inf")
    full = F.cross_entropy(full_logits, positives)
    assert torch.allclose(sampled, full, atol=1e-6)


def test_expected_counts_mix_in_batch_and_sampled_draws() -> None:
    items = torch.tensor([1, 2])
    pop = torch.tensor([0.0, 0.75, 0.25])
    uniform = torch.tensor([0.0, 0.5, 0.5])
    got = expected_counts_log(items, 8, pop, 4, uniform)
    assert torch.allclose(got, torch.log(torch.tensor([8 * 0.75 + 2, 8 * 0.25 + 2])))


class _Tiny(torch.nn.Module):
    """encode/item_table as SASRec has them: enough for the loss objects."""

    def __init__(self, items: int, h: int = 4) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(items + 1, h)

    def item_table(self) -> torch.Tensor:
        return self.emb.weight

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        return self.emb(seqs).cumsum(1)

    def training_logits(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.encode(seqs)[targets != 0] @ self.item_table().T
        out[:, 0] = float("-inf")
        return out


def test_auto_switches_at_the_threshold() -> None:
    config = TrainConfig(sampled_loss_min_items=100)
    assert not uses_sampled_loss(config, 99)
    assert uses_sampled_loss(config, 100)
    assert uses_sampled_loss(config.model_copy(update={"loss": "sampled"}), 5)
    assert not uses_sampled_loss(config.model_copy(update={"loss": "full"}), 10**6)


def test_sampled_loss_trains_and_is_finite() -> None:
    torch.manual_seed(0)
    model = _Tiny(50)
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    y = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    for sampling in ("uniform", "popularity"):
        loss_fn = SampledSoftmax(model, y, 50, 16, sampling, in_batch=True, seed=1)  # type: ignore[arg-type]
        loss = loss_fn(x, y)
        assert torch.isfinite(loss)
        loss.backward()
        assert model.emb.weight.grad is not None
        model.zero_grad()
    # no negatives at all is refused
    with pytest.raises(ValueError, match="num_negatives"):
        SampledSoftmax(model, y, 50, 0, "uniform", in_batch=False, seed=1)


def test_training_loss_picks_full_softmax_for_a_small_catalogue() -> None:
    model = _Tiny(10)
    x = torch.tensor([[0, 1, 2]])
    y = torch.tensor([[0, 2, 3]])
    full = training_loss(TrainConfig(), model, y, 10)(x, y)
    want = F.cross_entropy(model.training_logits(x, y), torch.tensor([2, 3]))
    assert torch.allclose(full, want)
    sampled = training_loss(TrainConfig(loss="sampled"), model, y, 10)
    assert isinstance(sampled, SampledSoftmax)
