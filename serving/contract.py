"""The request and answer contract of the model server, free of torch and of any web
framework: what the server accepts (v1 instances, v2 inputs, a caller key), how it answers,
and the same parsers reading a logged request and answer back (`parse_logged_request`,
`parse_logged_answer`), so the log sink reads exactly the contract the server accepted
without importing the model (torch alone is ~400 MiB and seconds of start-up).

Every request is checked against a `ServingConfig` before any model work; a bad one raises
`BadRequest` naming the field. A request may name its caller (`user_id` or `session_id`: per
v1 instance, in a v2 request's `parameters`) so that what was served can later be joined
with what the shopper did. The key plays no part in scoring; it is validated like an id but
never quoted in a message (it identifies a person), and only the log sink stores it,
pseudonymised.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from recpipe.events.contract import MAX_ID_LENGTH
from recpipe.serving.config import ServingConfig

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


CALLER_FIELDS = ("user_id", "session_id")  # who asked: either one, never both


@dataclass(frozen=True)
class Query:
    """One parsed instance: history oldest first, k, extra ids to leave out, and the caller
    key when the request named one (not used for scoring; kept out of repr so that no log
    line that shows a query shows a person)."""

    history: list[str]
    k: int
    exclude: list[str]
    caller: str | None = field(default=None, repr=False)


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


INSTANCE_FIELDS = frozenset({"history", "k", "exclude", *CALLER_FIELDS})


def _caller(fields: Mapping[str, Any], where: str) -> str | None:
    """The caller key of an instance or v2 parameters: `user_id` or `session_id`, a string
    (or JSON integer, as its text) of 1..MAX_ID_LENGTH characters. Messages name the field
    and what is wrong, never the value."""
    given = [f for f in CALLER_FIELDS if f in fields]
    if not given:
        return None
    if len(given) > 1:
        raise BadRequest(f"'{where}' names both user_id and session_id; give one caller key")
    name = given[0]
    value = fields[name]
    if _is_int(value):
        value = str(value)
    if not isinstance(value, str):
        raise BadRequest(f"'{where}.{name}' must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise BadRequest(
            f"'{where}.{name}' must have 1 to {MAX_ID_LENGTH} characters, got {len(value)}"
        )
    return value


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
    return Query(history, k, exclude, _caller(instance, where))


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


def parse_v2(
    inputs: Sequence[V2Input],
    config: ServingConfig,
    parameters: Mapping[str, Any] | None = None,
) -> Query:
    """OIP v2: BYTES input 'history' (one id per element, oldest first), optional integer
    input 'k' holding one value and BYTES input 'exclude'; one instance per request. The
    caller key, if any, is the request's `parameters.user_id` or `parameters.session_id`."""
    if parameters is not None and not isinstance(parameters, Mapping):
        raise BadRequest("v2 'parameters' must be an object")
    caller = _caller(parameters or {}, "parameters")
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
        query = parse_instance(instance, 0, config)
    except BadRequest as exc:  # name the v2 input, not the v1 field it maps to
        raise BadRequest(str(exc).replace("instances[0].", "inputs.")) from None
    return Query(query.history, query.k, query.exclude, caller)


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


def v1_response(
    answers: Sequence[Recommendation], model_name: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """The v1 body for the answers to one request's instances. Like a v2 answer it names the
    model and the registry version that answered (the served log records both; a v1 client
    reads `predictions` and may ignore the rest)."""
    body: dict[str, Any] = {"predictions": [r.to_dict() for r in answers]}
    if model_name is not None:
        body["model_name"] = model_name
    if version is not None:
        body["model_version"] = version
    return body


# --- a logged request and its answer, read back (the log sink) --------------------------

BINARY_HEADER = "Inference-Header-Content-Length"  # as Go canonicalises it in KServe's metadata
_INT_FORMATS = {
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
}


def _binary_tensor(name: str, datatype: str, raw: bytes) -> list[Any]:
    """One binary-extension tensor's elements: BYTES as 4-byte little-endian lengths each
    followed by that many bytes, integers as little-endian fixed-size values."""
    dtype = datatype.upper()
    if dtype in _INT_FORMATS:
        width = np.dtype(_INT_FORMATS[dtype]).itemsize
        if len(raw) % width:
            raise BadRequest(f"v2 input '{name}': {len(raw)} bytes is not a whole {dtype} tensor")
        return [int(v) for v in np.frombuffer(raw, dtype=_INT_FORMATS[dtype])]
    if dtype != "BYTES":
        raise BadRequest(f"v2 input '{name}': binary datatype {shorten(dtype, 20)} is not ours")
    out: list[Any] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest(f"v2 input '{name}': a BYTES element's length is cut off")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise BadRequest(f"v2 input '{name}': a BYTES element runs past the tensor")
        out.append(raw[pos : pos + size])
        pos += size
    return out


def _v2_body_inputs(obj: dict[str, Any], tail: bytes | None) -> list[V2Input]:
    """A checked v2 envelope's inputs; with `tail` (the bytes after a binary request's JSON
    header) the inputs without 'data' are cut from it in order, as the extension says."""
    inputs = []
    pos = 0
    for inp in obj["inputs"]:
        data = inp.get("data")
        if "data" not in inp:
            size = int(inp["parameters"]["binary_data_size"])
            assert tail is not None  # check_v2_envelope(binary=False) required 'data'
            if pos + size > len(tail):
                raise BadRequest(
                    "binary tensors: the inputs' binary_data_size run past the request's end"
                )
            data = _binary_tensor(inp["name"], inp["datatype"], tail[pos : pos + size])
            pos += size
        inputs.append(V2Input(inp["name"], inp["datatype"], inp["shape"], data))
    if tail is not None and pos != len(tail):
        raise BadRequest(
            f"binary tensors: {len(tail) - pos} bytes follow the last input's binary data"
        )
    return inputs


def parse_logged_request(
    body: bytes, config: ServingConfig, binary_header: int | None = None
) -> list[Query]:
    """The queries of a request as logged (KServe's logger sends the body as it was sent):
    v1 JSON, v2 JSON, or v2 binary tensors when `binary_header` (the request's
    Inference-Header-Content-Length, from the event's metadata) is given. BadRequest when
    it is not a request the server would have answered."""
    if binary_header is not None:
        if not 0 < binary_header <= len(body):
            raise BadRequest(
                f"{BINARY_HEADER} ({binary_header}) does not fit the {len(body)}-byte body"
            )
        obj = decode_json(body[:binary_header], "the JSON header of the binary request")
        check_v2_envelope(obj, binary=True)
        inputs = _v2_body_inputs(obj, body[binary_header:])
        return [parse_v2(inputs, config, obj.get("parameters"))]
    obj = decode_json(body)
    if isinstance(obj, dict) and "inputs" in obj:
        check_v2_envelope(obj, binary=False)
        return [parse_v2(_v2_body_inputs(obj, None), config, obj.get("parameters"))]
    return parse_v1(obj, config)


@dataclass(frozen=True)
class LoggedAnswer:
    """A response as logged: which model and version answered, and one answer per
    instance of the request."""

    model_name: str | None
    model_version: str | None
    answers: list[Recommendation]


def _text_field(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"answer field '{name}' must be a string of at most {MAX_ID_LENGTH}")
    return value


def _answer(items: Any, scores: Any, unknown: Any, fallback: Any, where: str) -> Recommendation:
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BadRequest(f"'{where}.items' must be a list of item ids")
    if (
        not isinstance(scores, list)
        or len(scores) != len(items)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scores)
        or not all(math.isfinite(v) for v in scores)
    ):
        raise BadRequest(f"'{where}.scores' must be {len(items)} finite numbers")
    if not _is_int(unknown) or int(unknown) < 0:
        raise BadRequest(f"'{where}.unknown_history' must be an integer >= 0")
    if fallback is not None and fallback not in (FALLBACK_POPULAR, FALLBACK_UNAVAILABLE):
        raise BadRequest(f"'{where}.fallback' is not one of the server's fallbacks")
    return Recommendation(items, [float(v) for v in scores], int(unknown), fallback)


def parse_logged_answer(body: bytes) -> LoggedAnswer:
    """A v1 or v2 answer of this server, as logged; BadRequest for anything else."""
    obj = decode_json(body, "the answer")
    if not isinstance(obj, dict):
        raise BadRequest(f"the answer must be a JSON object, got {type(obj).__name__}")
    name, version = _text_field(obj, "model_name"), _text_field(obj, "model_version")
    if "predictions" in obj:
        preds = obj["predictions"]
        if not isinstance(preds, list) or not all(isinstance(p, dict) for p in preds):
            raise BadRequest("'predictions' must be a list of objects")
        answers = [
            _answer(
                p.get("items"),
                p.get("scores"),
                p.get("unknown_history"),
                p.get("fallback"),
                f"predictions[{i}]",
            )
            for i, p in enumerate(preds)
        ]
        return LoggedAnswer(name, version, answers)
    outputs = obj.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest("the answer has neither 'predictions' (v1) nor 'outputs' (v2)")
    by_name = {o["name"]: o.get("data") for o in outputs if isinstance(o.get("name"), str)}
    if missing := [n for n in V2_OUTPUTS if n not in by_name]:
        raise BadRequest(f"the v2 answer lacks output(s) {missing}")
    unknown = by_name["unknown_history"]
    if not isinstance(unknown, list) or len(unknown) != 1:
        raise BadRequest("'outputs.unknown_history' must hold one integer")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("the v2 answer's 'parameters' must be an object")
    answer = _answer(
        by_name["items"], by_name["scores"], unknown[0], params.get("fallback"), "outputs"
    )
    return LoggedAnswer(name, version, [answer])
