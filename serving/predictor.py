"""The predictor's core, free of any web framework: raw item-id histories in, top-k out.

Ids and sequences go through the training library (`Vocabulary.encode`,
`ModelBundle.score_encoded`, which pads and excludes the history exactly as evaluation
does), so served scores are the evaluation code's scores. Every request is checked against
a `ServingConfig` before any model work; a bad one raises `BadRequest` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recpipe.serving.config import ServingConfig
from recpipe.training.model import ModelBundle


class BadRequest(ValueError):
    """A request that cannot be answered; the message names the field."""


@dataclass(frozen=True)
class Query:
    """One parsed instance: history oldest first, k, extra ids to leave out."""

    history: list[str]
    k: int
    exclude: list[str]


@dataclass(frozen=True)
class Recommendation:
    items: list[str]
    scores: list[float]
    unknown_history: int

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "unknown_history": self.unknown_history}


def _id_list(value: Any, field: str, limit: int) -> list[str]:
    """Ids are strings exactly as in the events; JSON integers are accepted as their text."""
    if not isinstance(value, list):
        raise BadRequest(f"'{field}' must be a list of item ids, got {type(value).__name__}")
    if len(value) > limit:
        raise BadRequest(f"'{field}' has {len(value)} ids; the limit is {limit}")
    out: list[str] = []
    for i, v in enumerate(value):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_):
            out.append(str(v))
        else:
            raise BadRequest(f"'{field}[{i}]' must be a string item id, got {type(v).__name__}")
    return out


def _k(value: Any, field: str, config: ServingConfig) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool | np.bool_):
        raise BadRequest(f"'{field}' must be an integer, got {type(value).__name__} {value!r}")
    k = int(value)
    if not 1 <= k <= config.max_k:
        raise BadRequest(f"'{field}' must be between 1 and {config.max_k}, got {k}")
    return k


INSTANCE_FIELDS = frozenset({"history", "k", "exclude"})


def parse_instance(instance: Any, index: int, config: ServingConfig) -> Query:
    """One v1 instance, or BadRequest naming the field."""
    where = f"instances[{index}]"
    if not isinstance(instance, dict):
        raise BadRequest(
            f"'{where}' must be an object with 'history' and optional 'k', 'exclude'; "
            f"got {type(instance).__name__}"
        )
    unknown = set(instance) - INSTANCE_FIELDS
    if unknown:
        raise BadRequest(f"'{where}' has unknown field(s) {sorted(unknown)}")
    if "history" not in instance:
        raise BadRequest(f"'{where}.history' is required")
    history = _id_list(instance["history"], f"{where}.history", config.max_history)
    k = _k(instance.get("k", config.default_k), f"{where}.k", config)
    exclude = _id_list(instance.get("exclude", []), f"{where}.exclude", config.max_exclude)
    return Query(history, k, exclude)


def parse_v1(payload: Any, config: ServingConfig) -> list[Query]:
    """A v1 body `{"instances": [...]}`, or BadRequest naming the field."""
    if not isinstance(payload, dict):
        raise BadRequest(
            f"body must be a JSON object with an 'instances' list, got {type(payload).__name__}"
        )
    if "instances" not in payload:
        raise BadRequest(f"body needs an 'instances' list; got field(s) {sorted(payload)}")
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list")
    if len(instances) > config.max_batch:
        raise BadRequest(
            f"'instances' has {len(instances)} entries; the limit is {config.max_batch}"
        )
    return [parse_instance(inst, i, config) for i, inst in enumerate(instances)]


@dataclass(frozen=True)
class V2Input:
    """What the model sees of one OIP input tensor."""

    name: str
    datatype: str
    shape: list[int]
    data: Any


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, np.ndarray):
        return list(data.ravel())
    if isinstance(data, list | tuple):
        return (
            [x for d in data for x in _flatten(d)]
            if any(isinstance(d, list | tuple) for d in data)
            else list(data)
        )
    return [data]


def _bytes_to_str(values: list[Any], field: str) -> list[Any]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"'{field}[{i}]' is not UTF-8") from None
        out.append(v)
    return out


V2_INPUTS = {"history": "BYTES", "k": "INT", "exclude": "BYTES"}


def parse_v2(inputs: Sequence[V2Input], config: ServingConfig) -> Query:
    """OIP v2: BYTES input 'history' (one id per element, oldest first), optional integer
    input 'k' holding one value and BYTES input 'exclude'; one instance per request."""
    by_name: dict[str, V2Input] = {}
    for inp in inputs:
        if inp.name not in V2_INPUTS:
            raise BadRequest(f"unknown v2 input '{inp.name}'; expected {sorted(V2_INPUTS)}")
        if inp.name in by_name:
            raise BadRequest(f"v2 input '{inp.name}' given twice")
        want = V2_INPUTS[inp.name]
        dtype = inp.datatype.upper()
        if not (dtype == want or (want == "INT" and dtype.lstrip("U").startswith("INT"))):
            kind = "INT32 or INT64" if want == "INT" else want
            raise BadRequest(f"v2 input '{inp.name}' must have datatype {kind}, got {dtype}")
        n = len(_flatten(inp.data))
        if int(np.prod(inp.shape)) != n:
            raise BadRequest(
                f"v2 input '{inp.name}' has shape {list(inp.shape)} but {n} data elements"
            )
        by_name[inp.name] = inp
    if "history" not in by_name:
        raise BadRequest("v2 request needs an input named 'history' (BYTES)")
    instance: dict[str, Any] = {
        "history": _bytes_to_str(_flatten(by_name["history"].data), "inputs.history")
    }
    if "k" in by_name:
        ks = _flatten(by_name["k"].data)
        if len(ks) != 1:
            raise BadRequest(f"v2 input 'k' must hold exactly one integer, got {len(ks)} values")
        instance["k"] = ks[0]
    if "exclude" in by_name:
        instance["exclude"] = _bytes_to_str(_flatten(by_name["exclude"].data), "inputs.exclude")
    try:
        return parse_instance(instance, 0, config)
    except BadRequest as exc:  # name the v2 input, not the v1 field it maps to
        raise BadRequest(str(exc).replace("instances[0].", "inputs.")) from None


class Recommender:
    """The model behind the server, usable in-process (benchmarks, infra validation)."""

    def __init__(self, bundle: ModelBundle, config: ServingConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or ServingConfig()

    @torch.inference_mode()  # ~5% faster than no_grad per batch-1 call; results are lists
    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Top-k per query, best first; history and `exclude` ids are never returned."""
        vocab = self.bundle.vocab
        encoded = [vocab.encode(q.history) for q in queries]
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


def v1_response(answers: Sequence[Recommendation]) -> dict[str, Any]:
    """The v1 body for the answers to one request's instances."""
    return {"predictions": [r.to_dict() for r in answers]}


def manifest_summary(manifest: dict[str, Any]) -> str:
    return json.dumps({k: manifest.get(k) for k in ("model_name", "version", "code_version")})
