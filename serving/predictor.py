"""The KServe predictor: raw item-id histories in, top-k raw item ids out.

It reuses the training library for everything about ids and sequences (vocabulary,
padding, history exclusion), so served scores are the evaluation code's scores.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recpipe.model import ModelBundle

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request that cannot be answered; the message names the field."""


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
    max_history: int = 1000
    max_batch: int = 64
    max_exclude: int = 1000


@dataclass(frozen=True)
class Recommendation:
    items: list[str]
    scores: list[float]
    unknown_history: int

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "unknown_history": self.unknown_history}


def _id_list(value: Any, field: str, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"'{field}' must be a list of item ids, got {type(value).__name__}")
    if len(value) > limit:
        raise BadRequest(f"'{field}' has {len(value)} ids; the limit is {limit}")
    for i, v in enumerate(value):
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise BadRequest(f"'{field}[{i}]' must be a string item id, got {type(v).__name__}")
    return [str(v) for v in value]


def parse_instance(instance: Any, index: int, limits: Limits) -> tuple[list[str], int, list[str]]:
    """(history, k, exclude) from one v1 instance, or BadRequest naming the field."""
    where = f"instances[{index}]"
    if not isinstance(instance, dict):
        raise BadRequest(f"{where} must be an object with 'history' and optional 'k'")
    unknown = set(instance) - {"history", "k", "exclude"}
    if unknown:
        raise BadRequest(f"{where} has unknown field(s) {sorted(unknown)}")
    if "history" not in instance:
        raise BadRequest(f"{where}.history is required")
    history = _id_list(instance["history"], f"{where}.history", limits.max_history)
    k = instance.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool):
        raise BadRequest(f"{where}.k must be an integer, got {type(k).__name__}")
    if not 1 <= k <= limits.max_k:
        raise BadRequest(f"{where}.k must be between 1 and {limits.max_k}, got {k}")
    exclude = _id_list(instance.get("exclude", []), f"{where}.exclude", limits.max_exclude)
    return history, k, exclude


DEFAULT_LIMITS = Limits()


class Recommender:
    """Framework-free core of the predictor (used in-process by benchmarks and tests)."""

    def __init__(self, bundle: ModelBundle, limits: Limits = DEFAULT_LIMITS) -> None:
        self.bundle = bundle
        self.limits = limits

    def recommend(self, requests: list[tuple[list[str], int, list[str]]]) -> list[Recommendation]:
        vocab = self.bundle.vocab
        encoded, unknown = zip(*(vocab.encode(h) for h, _, _ in requests), strict=True)
        scores = self.bundle.score_encoded(list(encoded))
        extra = [vocab.encode(ex)[0] for _, _, ex in requests]
        for row, ids in enumerate(extra):
            if ids:
                scores[row, torch.tensor(ids)] = float("-inf")
        out = []
        for row, (_, k, _) in enumerate(requests):
            top = torch.topk(scores[row], min(k, len(vocab)))
            keep = torch.isfinite(top.values)
            idx = top.indices[keep].tolist()
            out.append(
                Recommendation(
                    vocab.decode(idx), [round(float(s), 6) for s in top.values[keep]], unknown[row]
                )
            )
        return out

    def predict_v1(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or "instances" not in payload:
            raise BadRequest("body must be a JSON object with an 'instances' list")
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list")
        if len(instances) > self.limits.max_batch:
            raise BadRequest(
                f"'instances' has {len(instances)} entries; the limit is {self.limits.max_batch}"
            )
        parsed = [parse_instance(inst, i, self.limits) for i, inst in enumerate(instances)]
        return {"predictions": [r.to_dict() for r in self.recommend(parsed)]}


def v2_request_to_v1(inputs: dict[str, Any]) -> dict[str, Any]:
    """OIP v2: BYTES input 'history' (one id per element), optional INT 'k' and BYTES
    'exclude'; one instance per request."""
    if "history" not in inputs:
        raise BadRequest("v2 request needs an input named 'history' (BYTES)")
    instance: dict[str, Any] = {"history": inputs["history"]}
    if "k" in inputs:
        ks = inputs["k"]
        if len(ks) != 1:
            raise BadRequest("v2 input 'k' must hold exactly one integer")
        instance["k"] = int(ks[0])
    if "exclude" in inputs:
        instance["exclude"] = inputs["exclude"]
    return {"instances": [instance]}


def decode_bytes(values: Any) -> list[Any]:
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in np.asarray(values).ravel()]


def manifest_summary(manifest: dict[str, Any]) -> str:
    return json.dumps({k: manifest.get(k) for k in ("model_name", "version", "code_version")})
