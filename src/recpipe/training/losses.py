"""Training losses: full softmax over the catalogue, or sampled softmax when it is large.

Full softmax cross-entropy (SASRec+, Klenitskiy & Vasilev, RecSys 2023) is the quality
reference, but its logits are [positions x catalogue]: a batch of 128 sequences of 50 at
10^6 items is 6,400 x 10^6 floats (25.6 GB, three times that with the softmax and its
gradient). Above `TrainConfig.sampled_loss_min_items` ("auto") the trainer switches to
sampled softmax: each position's positive against a shared candidate set of in-batch
positives (the other positions' targets, a free popularity-distributed sample) plus
`num_negatives` items drawn uniformly or by popularity. Klenitskiy & Vasilev show SASRec
with cross-entropy over many sampled negatives stays close to full cross-entropy, unlike
one negative with BCE; gSASRec (Petrov & Macdonald, RecSys 2023) shows the gap of few
negatives is overconfidence on popular items, which gBCE calibrates. We keep the softmax
form and remove the sampling bias the standard way instead (Bengio & Senecal; Yi et al.,
RecSys 2019, "logQ correction"): a candidate's logit is lowered by log of its expected
number of draws into the candidate set, so a popular item, drawn often, is not pushed down
more than a full softmax would push it. The positive is not corrected (it was not drawn),
which makes the loss equal full softmax exactly when the candidates are the whole
catalogue once each (expected count 1, log 0). Candidates equal to a position's own
positive ("accidental hits") are masked: the positive is never its own negative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.features.sequences import PAD
from recpipe.training.config import TrainConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, targets) -> loss


class Scorer(Protocol):
    """What the losses need of a model (SASRec has it)."""

    def item_table(self) -> torch.Tensor: ...

    def encode(self, seqs: torch.Tensor) -> torch.Tensor: ...

    def training_logits(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


def uses_sampled_loss(config: TrainConfig, num_items: int) -> bool:
    """Whether training on `num_items` items uses sampled softmax under `config`."""
    if config.loss == "auto":
        return num_items >= config.sampled_loss_min_items
    return config.loss == "sampled"


def sampled_logits(
    hidden: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    candidate_log_q: torch.Tensor,
    table: torch.Tensor,
) -> torch.Tensor:
    """[N, 1 + C] logits: column 0 the positive's (uncorrected), then each candidate's
    minus its log expected count `candidate_log_q`, -inf where a candidate is the row's
    own positive (or PAD).

    hidden [N, H] states at target positions, positives [N] item indices, candidates [C]
    item indices (repeats allowed: each column is one draw), candidate_log_q [C],
    table [num_items + 1, H] item vectors (row 0 = PAD)."""
    pos = (hidden * table[positives]).sum(-1, keepdim=True)
    neg = hidden @ table[candidates].T - candidate_log_q[None, :]
    hit = (candidates[None, :] == positives[:, None]) | (candidates == PAD)[None, :]
    neg = neg.masked_fill(hit, float("-inf"))
    return torch.cat([pos, neg], dim=1)


def sampled_softmax_loss(
    hidden: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    candidate_log_q: torch.Tensor,
    table: torch.Tensor,
) -> torch.Tensor:
    """Mean cross-entropy of each positive against the corrected candidates."""
    logits = sampled_logits(hidden, positives, candidates, candidate_log_q, table)
    target = torch.zeros(len(positives), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def expected_counts_log(
    items: torch.Tensor,
    in_batch: int,
    in_batch_probs: torch.Tensor,
    sampled: int,
    sampler_probs: torch.Tensor,
) -> torch.Tensor:
    """log of the expected number of times each of `items` is drawn into a candidate set
    of `in_batch` draws from `in_batch_probs` plus `sampled` draws from `sampler_probs`
    (both [num_items + 1], indexed by item)."""
    expected = in_batch * in_batch_probs[items] + sampled * sampler_probs[items]
    return torch.log(expected.clamp_min(1e-30))


class SampledSoftmax:
    """The sampled loss for one training run: the proposal distributions are fixed from
    the training targets, the negatives drawn afresh for every batch."""

    def __init__(
        self,
        model: Scorer,
        targets: torch.Tensor,
        num_items: int,
        num_negatives: int,
        sampling: Literal["uniform", "popularity"],
        in_batch: bool,
        seed: int,
    ) -> None:
        if num_negatives == 0 and not in_batch:
            raise ValueError("sampled softmax needs num_negatives > 0 or in-batch negatives")
        self.model = model
        self.num_negatives = num_negatives
        self.in_batch = in_batch
        counts = torch.bincount(targets[targets != PAD].flatten(), minlength=num_items + 1)
        counts = counts.double()
        # in-batch candidates are training targets: drawn as often as items are targets
        self.target_probs = (counts / counts.sum().clamp_min(1)).float()
        if sampling == "uniform":
            probs = torch.full((num_items + 1,), 1.0 / num_items, dtype=torch.float64)
            probs[PAD] = 0.0
        else:
            probs = counts / counts.sum().clamp_min(1)
        self.sampler_probs = probs.float()
        self.uniform = sampling == "uniform"
        self.num_items = num_items
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self) -> torch.Tensor:
        if self.uniform:
            return torch.randint(1, self.num_items + 1, (self.num_negatives,), generator=self.generator)
        return torch.multinomial(
            self.sampler_probs, self.num_negatives, replacement=True, generator=self.generator
        )

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = targets != PAD
        positives = targets[mask]
        table = self.model.item_table()
        hidden = self.model.encode(inputs)[mask]
        parts = [positives] if self.in_batch else []
        if self.num_negatives:
            parts.append(self._draw().to(positives.device))
        candidates = torch.cat(parts)
        n_batch = len(positives) if self.in_batch else 0
        log_q = expected_counts_log(
            candidates,
            n_batch,
            self.target_probs.to(positives.device),
            self.num_negatives,
            self.sampler_probs.to(positives.device),
        )
        return sampled_softmax_loss(hidden, positives, candidates, log_q, table)


def full_softmax(model: Scorer) -> LossFn:
    """Cross-entropy over every item (PAD's logit is -inf)."""
    ce = nn.CrossEntropyLoss()

    def loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ce(model.training_logits(inputs, targets), targets[targets != PAD])

    return loss


def training_loss(
    config: TrainConfig, model: Scorer, targets: torch.Tensor, num_items: int
) -> LossFn:
    """The loss `config` asks for on this catalogue (see `uses_sampled_loss`)."""
    if not uses_sampled_loss(config, num_items):
        return full_softmax(model)
    return SampledSoftmax(
        model,
        targets,
        num_items,
        config.num_negatives,
        config.negative_sampling,
        config.in_batch_negatives,
        seed=config.seed * 7_919 + 1,
    )


def full_logits_bytes(positions: int, num_items: int) -> int:
    """fp32 bytes of one batch's full-softmax logits (the quantity that breaks first)."""
    return 4 * positions * (num_items + 1)

