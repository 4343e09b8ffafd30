"""The full-ranking protocol: every item is scored, the user's history is excluded (by the
scorer), and the held-out target's rank is kept. Training's early stopping and the
evaluation stage rank with this same code, so their numbers mean the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recpipe.features.sequences import Features, Vocabulary
from recpipe.ranking import metrics

ScoreFn = Callable[[list[np.ndarray]], torch.Tensor]


@dataclass(frozen=True)
class EvalSet:
    """Histories and held-out targets, encoded with `vocab`."""

    vocab: Vocabulary
    histories: list[np.ndarray]
    targets: np.ndarray

    @classmethod
    def from_features(cls, features: Features, which: str) -> EvalSet:
        histories, targets = features.split(which)
        return cls(features.vocab, histories, targets)

    def translated(self, vocab: Vocabulary) -> tuple[list[np.ndarray], np.ndarray]:
        """The same set in another vocabulary: unknown history items dropped, unknown
        targets set to -1 (scored as misses)."""
        if vocab.items == self.vocab.items:
            return self.histories, self.targets
        lookup = np.array([-1] + [vocab.index_of(i) or -1 for i in self.vocab.items])
        histories = [h2[h2 > 0] for h2 in (lookup[h] for h in self.histories)]
        return histories, lookup[self.targets]


def rank_targets(
    score: ScoreFn, histories: Sequence[np.ndarray], targets: np.ndarray, batch_size: int
) -> np.ndarray:
    """Ranks of targets under `score`, in batches; -1 for unrankable targets.

    Rows are batched by history length (each row is scored independently, so the order
    does not matter) to keep padding, and so cost, low."""
    ranks = np.full(len(targets), -1, dtype=np.int64)
    known = np.flatnonzero(targets > 0)
    known = known[np.argsort([len(histories[int(i)]) for i in known], kind="stable")]
    for start in range(0, len(known), batch_size):
        rows = known[start : start + batch_size]
        scores = score([histories[int(i)] for i in rows]).numpy()
        ranks[rows] = metrics.ranks_from_scores(scores, targets[rows])
    return ranks
