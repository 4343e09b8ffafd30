"""The predictor's core, free of any web framework: raw item-id histories in, top-k out.

Ids and sequences go through the training library (`Vocabulary.encode`,
`ModelBundle.score_encoded`, which pads and excludes the history exactly as evaluation
does), so served scores are the evaluation code's scores. Every request is checked against
a `ServingConfig` before any model work; a bad one raises `BadRequest` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from recpipe.serving.config import ServingConfig
from recpipe.training.model import ModelBundle

MAX_MESSAGE = 300  # characters of an error message: a request never gets echoed back whole
_SHOWN = 60  # characters of one value quoted in a message


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut to `limit` characters with a short "..." suffix."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def show(value: Any) -> str:
    """A value quoted in a message: its repr, cut short."""
    return shorten(repr(value), _SHOWN)


class BadRequest(ValueError):
    """A request that cannot be answered; the message names the field and is bounded."""

    def __init__(self, message: str) -> None:
        super().__init__(shorten(message))


FALLBACK_POPULAR = "most_popular"  # cold start answered with the training data's top items
FALLBACK_UNAVAILABLE = "unavailable"  # cold start, but the bundle carries no popularity


@dataclass(frozen=True)
class Query:
    """One parsed instance: history oldest first, k, extra ids to leave out."""

    history: list[str]
    k: int
    exclude: list[str]


@dataclass(frozen=True)
class Recommendation:
    """One answer. `fallback` says how a request without any known history id was answered
    (None: by the model, personalised)."""

    items: list[str]
    scores: list[float]
    unknown_history: int
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "items": self.items,
            "scores": self.scores,
            "unknown_history": self.unknown_history,
        }
        if self.fallback is not None:
            out["fallback"] = self.fallback
        return out


def decode_json(body: bytes | bytearray | str, what: str = "body") -> Any:
    """Strict JSON (UTF-8, no NaN, nesting depth at most 1024, checked without recursion in
    Python), or BadRequest; the body itself is never quoted back."""
    if not body:
        raise BadRequest(f"{what} is empty; expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {shorten(str(exc), 120)}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _names(keys: Any) -> str:
    """A few of a mapping's keys, for a message about unexpected fields."""
    shown = sorted(shorten(str(k), 30) for k in list(keys)[:1000])[:5]
    more = len(keys) - len(shown)
    return str(shown) + (f" and {more} more" if more > 0 else "")


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
        elif _is_int(v):
            out.append(str(v))
        else:
            raise BadRequest(f"'{field}[{i}]' must be a string item id, got {type(v).__name__}")
    return out


def _k(value: Any, field: str, config: ServingConfig) -> int:
    if not _is_int(value):
        raise BadRequest(f"'{field}' must be an integer, got {type(value).__name__} {show(value)}")
    k = int(value)
    if not 1 <= k <= config.max_k:
        raise BadRequest(
            f"'{field}' must be between 1 and {config.max_k}, got {shorten(str(k), 30)}"
        )
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
        raise BadRequest(f"'{where}' has unknown field(s) {_names(unknown)}")
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
        raise BadRequest(f"body needs an 'instances' list; got field(s) {_names(payload)}")
    if unknown := set(payload) - {"instances"}:
        raise BadRequest(f"body has unknown field(s) {_names(unknown)}; only 'instances'")
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


V2_INPUTS = {"history": "BYTES", "k": "INT", "exclude": "BYTES"}
INT_DATATYPES = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
MAX_DIMS = 4  # a v2 tensor's rank: ours are 1-D ([n] or [1, n]); more is a mistake
MAX_DIM_SIZE = 2**31 - 1
V2_ENVELOPE_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
V2_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "data", "parameters"})
MAX_V2_ID = 256  # the request id is echoed in the answer: bounded
V2_OUTPUTS = ("items", "scores", "unknown_history")


def check_v2_envelope(obj: Any, binary: bool) -> None:
    """The structure of a v2 request (its JSON part when tensors follow in binary), checked
    before any tensor is decoded: known fields with the right types and bounded sizes, so
    that decoding can only fail with BadRequest. What the inputs mean is `parse_v2`'s."""
    if not isinstance(obj, dict):
        raise BadRequest(f"v2 body must be a JSON object, got {type(obj).__name__}")
    if unknown := set(obj) - V2_ENVELOPE_FIELDS:
        raise BadRequest(f"v2 body has unknown field(s) {_names(unknown)}")
    rid = obj.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_V2_ID):
        raise BadRequest(f"v2 'id' must be a string of at most {MAX_V2_ID} characters")
    if not isinstance(obj.get("parameters", {}), dict):
        raise BadRequest("v2 'parameters' must be an object")
    outputs = obj.get("outputs", [])
    if (
        not isinstance(outputs, list)
        or len(outputs) > len(V2_OUTPUTS)
        or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    ):
        raise BadRequest(f"v2 'outputs' must be a list of at most {len(V2_OUTPUTS)} named outputs")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("v2 body needs a non-empty 'inputs' list")
    if len(inputs) > len(V2_INPUTS):
        raise BadRequest(f"v2 body has {len(inputs)} inputs; expected at most {len(V2_INPUTS)}")
    for i, inp in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(inp, dict):
            raise BadRequest(f"'{where}' must be an object, got {type(inp).__name__}")
        if unknown := set(inp) - V2_INPUT_FIELDS:
            raise BadRequest(f"'{where}' has unknown field(s) {_names(unknown)}")
        name = inp.get("name")
        if not isinstance(name, str) or name not in V2_INPUTS:
            raise BadRequest(f"unknown v2 input {show(name)}; expected {sorted(V2_INPUTS)}")
        if not isinstance(inp.get("datatype"), str):
            raise BadRequest(f"v2 input '{name}' needs a 'datatype' string")
        shape = inp.get("shape")
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= MAX_DIMS
            or not all(_is_int(d) and 0 <= d <= MAX_DIM_SIZE for d in shape)
        ):
            raise BadRequest(
                f"v2 input '{name}' needs a 'shape' of 1 to {MAX_DIMS} sizes in "
                f"0..{MAX_DIM_SIZE}, got {show(shape)}"
            )
        params = inp.get("parameters", {})
        if not isinstance(params, dict):
            raise BadRequest(f"v2 input '{name}': 'parameters' must be an object")
        if "data" in inp:
            continue
        size: Any = params.get("binary_data_size")
        if not binary:
            raise BadRequest(f"v2 input '{name}' has no 'data'")
        if not _is_int(size) or int(size) < 0:
            raise BadRequest(f"v2 input '{name}' has neither 'data' nor a 'binary_data_size' >= 0")


def _elements(inp: V2Input) -> list[Any]:
    """The tensor's elements in row-major order: flat data, or nested lists exactly of its
    shape (walked level by level: depth is bounded by the shape, never by the input)."""
    shape = list(inp.shape)
    if not 1 <= len(shape) <= MAX_DIMS or not all(_is_int(d) and d >= 0 for d in shape):
        raise BadRequest(f"v2 input '{inp.name}' has an invalid shape {show(shape)}")
    size = math.prod(int(d) for d in shape)
    data = inp.data
    if isinstance(data, np.ndarray):
        values = list(data.ravel())
    elif not isinstance(data, list | tuple):
        raise BadRequest(f"v2 input '{inp.name}' data must be a list, got {type(data).__name__}")
    elif not any(isinstance(x, list | tuple) for x in data):
        values = list(data)
    else:
        level: list[Any] = [data]
        for dim in shape:
            nxt: list[Any] = []
            for node in level:
                if not isinstance(node, list | tuple) or len(node) != dim:
                    raise BadRequest(
                        f"v2 input '{inp.name}' data is not nested as its shape {show(shape)}"
                    )
                nxt.extend(node)
            level = nxt
        if any(isinstance(x, list | tuple) for x in level):
            raise BadRequest(f"v2 input '{inp.name}' data is nested deeper than its shape")
        values = level
    if len(values) != size:
        raise BadRequest(
            f"v2 input '{inp.name}' has shape {show(shape)} but {len(values)} data elements"
        )
    return values


def _strings(values: list[Any], field: str) -> list[Any]:
    """BYTES elements as text; binary ones must be UTF-8 (other types are left to the id
    check, which names them)."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"'{field}[{i}]' is not UTF-8") from None
        out.append(v)
    return out


def parse_v2(inputs: Sequence[V2Input], config: ServingConfig) -> Query:
    """OIP v2: BYTES input 'history' (one id per element, oldest first), optional integer
    input 'k' holding one value and BYTES input 'exclude'; one instance per request."""
    by_name: dict[str, V2Input] = {}
    values: dict[str, list[Any]] = {}
    for inp in inputs:
        if inp.name not in V2_INPUTS:
            raise BadRequest(f"unknown v2 input {show(inp.name)}; expected {sorted(V2_INPUTS)}")
        if inp.name in by_name:
            raise BadRequest(f"v2 input '{inp.name}' given twice")
        want = V2_INPUTS[inp.name]
        dtype = str(inp.datatype).upper()
        if not (dtype == want or (want == "INT" and dtype in INT_DATATYPES)):
            kind = "INT32 or INT64" if want == "INT" else want
            raise BadRequest(
                f"v2 input '{inp.name}' must have datatype {kind}, got {shorten(dtype, 20)}"
            )
        by_name[inp.name] = inp
        values[inp.name] = _elements(inp)
    if "history" not in by_name:
        raise BadRequest("v2 request needs an input named 'history' (BYTES)")
    instance: dict[str, Any] = {"history": _strings(values["history"], "inputs.history")}
    if "k" in by_name:
        ks = values["k"]
        if len(ks) != 1:
            raise BadRequest(f"v2 input 'k' must hold exactly one integer, got {len(ks)} values")
        instance["k"] = ks[0]
    if "exclude" in by_name:
        instance["exclude"] = _strings(values["exclude"], "inputs.exclude")
    try:
        return parse_instance(instance, 0, config)
    except BadRequest as exc:  # name the v2 input, not the v1 field it maps to
        raise BadRequest(str(exc).replace("instances[0].", "inputs.")) from None


def v2_metadata() -> dict[str, list[dict[str, Any]]]:
    """The v2 model metadata's inputs and outputs (-1: any length)."""
    return {
        "inputs": [
            {"name": "history", "datatype": "BYTES", "shape": [-1]},
            {"name": "k", "datatype": "INT32", "shape": [1]},
            {"name": "exclude", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "items", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1]},
            {"name": "unknown_history", "datatype": "INT32", "shape": [1]},
        ],
    }


class Recommender:
    """The model behind the server, usable in-process (benchmarks, infra validation).

    A query with no known history id (empty, or only ids the model never saw) cannot be
    personalised: it is answered with the training data's most popular items that it does
    not exclude (`fallback="most_popular"`, scores are training interaction counts), or,
    from a bundle that carries no popularity ranking, with no items
    (`fallback="unavailable"`), never with arbitrary items.
    """

    def __init__(self, bundle: ModelBundle, config: ServingConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or ServingConfig()

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

    @torch.inference_mode()  # ~5% faster than no_grad per batch-1 call; results are lists
    def _personalised(
        self, queries: Sequence[Query], encoded: Sequence[tuple[list[int], int]]
    ) -> list[Recommendation]:
        vocab = self.bundle.vocab
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
