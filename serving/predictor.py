"""The predictor's core, free of any web framework: raw item-id histories in, top-k out.

Ids and sequences go through the training library (`Vocabulary.encode`,
`ModelBundle.score_encoded`, which pads and excludes the history exactly as evaluation
does), so served scores are the evaluation code's scores. Requests are parsed and checked by
`serving.contract` (torch-free, shared with the log sink) before any model work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from recpipe.serving.config import ServingConfig
from recpipe.serving.contract import FALLBACK_POPULAR as FALLBACK_POPULAR
from recpipe.serving.contract import FALLBACK_UNAVAILABLE as FALLBACK_UNAVAILABLE
from recpipe.serving.contract import MAX_MESSAGE as MAX_MESSAGE
from recpipe.serving.contract import Query as Query
from recpipe.serving.contract import Recommendation as Recommendation
from recpipe.serving.index import ItemIndex, top_k_with_index
from recpipe.training.model import ModelBundle


class Recommender:
    """The model behind the server, usable in-process (benchmarks, infra validation).

    A query with no known history id (empty, or only ids the model never saw) cannot be
    personalised: it is answered with the training data's most popular items that it does
    not exclude (`fallback="most_popular"`, scores are training interaction counts), or,
    from a bundle that carries no popularity ranking, with no items
    (`fallback="unavailable"`), never with arbitrary items.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        config: ServingConfig | None = None,
        index: ItemIndex | None = None,
    ) -> None:
        self.bundle = bundle
        self.config = config or ServingConfig()
        # the bundle's approximate index answers only for a large catalogue (ann_min_items)
        least = self.config.ann_min_items
        self.index = index if least is not None and len(bundle.vocab) >= least else None

    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Top-k per query, best first; history and `exclude` ids are never returned."""
        encoded = [self.bundle.vocab.encode(q.history) for q in queries]
        warm = [i for i, (ids, _) in enumerate(encoded) if ids]
        out: list[Recommendation | None] = [None] * len(queries)
        if warm:
            answers = self._personalised([queries[i] for i in warm], [encoded[i] for i in warm])
            for i, answer in zip(warm, answers, strict=True):
                out[i] = answer
        for i, (q, (_, unknown)) in enumerate(zip(queries, encoded, strict=True)):
            if out[i] is None:
                out[i] = self._cold_start(q, unknown)
        return [r for r in out if r is not None]

    def _cold_start(self, q: Query, unknown: int) -> Recommendation:
        popularity = self.bundle.popularity
        if popularity is None:
            return Recommendation([], [], unknown, FALLBACK_UNAVAILABLE)
        excluded = set(self.bundle.vocab.encode(q.exclude)[0]) if q.exclude else set()
        picked: list[tuple[int, int]] = []
        for idx, count in zip(popularity.indices, popularity.counts, strict=True):
            if idx not in excluded:
                picked.append((idx, count))
                if len(picked) == q.k:
                    break
        items = self.bundle.vocab.decode([i for i, _ in picked])
        return Recommendation(items, [float(c) for _, c in picked], unknown, FALLBACK_POPULAR)

    def _approximate(
        self, queries: Sequence[Query], encoded: Sequence[tuple[list[int], int]]
    ) -> list[Recommendation]:
        """Top-k from the item index (serving.index): history and `exclude` ids filtered
        out of an over-fetched list, as the exact path leaves them out."""
        assert self.index is not None
        vocab = self.bundle.vocab
        excluded = [
            set(ids) | set(vocab.encode(q.exclude)[0])
            for q, (ids, _) in zip(queries, encoded, strict=True)
        ]
        found = top_k_with_index(
            self.bundle, self.index, [ids for ids, _ in encoded], excluded, [q.k for q in queries]
        )
        return [
            Recommendation(vocab.decode(idx), [round(s, 6) for s in scores], unknown)
            for (idx, scores), (_, unknown) in zip(found, encoded, strict=True)
        ]

    @torch.inference_mode()  # ~5% faster than no_grad per batch-1 call; results are lists
    def _personalised(
        self, queries: Sequence[Query], encoded: Sequence[tuple[list[int], int]]
    ) -> list[Recommendation]:
        vocab = self.bundle.vocab
        if self.index is not None:
            return self._approximate(queries, encoded)
        scores = self.bundle.score_encoded([ids for ids, _ in encoded])
        for row, q in enumerate(queries):
            if q.exclude:
                extra, _ = vocab.encode(q.exclude)
                if extra:
                    scores[row, torch.tensor(extra)] = float("-inf")
        k_max = min(max(q.k for q in queries), scores.shape[1])
        top = torch.topk(scores, k_max, dim=1)
        values, indices = top.values.tolist(), top.indices.tolist()
        if any(v != v for vals in values for v in vals):
            # Never answer NaN (not JSON, not a ranking). topk ranks NaN above every number,
            # so a NaN anywhere in a row shows in its top k: only then pay for the full scan.
            scores.masked_fill_(scores.isnan(), float("-inf"))
            top = torch.topk(scores, k_max, dim=1)
            values, indices = top.values.tolist(), top.indices.tolist()
        out = []
        for row, q in enumerate(queries):
            vals, idx = values[row][: q.k], indices[row][: q.k]
            n = next((i for i, v in enumerate(vals) if v == float("-inf")), len(vals))
            out.append(
                Recommendation(
                    vocab.decode(idx[:n]), [round(v, 6) for v in vals[:n]], encoded[row][1]
                )
            )
        return out


def manifest_summary(manifest: dict[str, Any]) -> str:
    return json.dumps({k: manifest.get(k) for k in ("model_name", "version", "code_version")})
