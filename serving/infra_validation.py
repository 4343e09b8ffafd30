"""Infra validation (TFX's InfraValidator): before a model is pushed, serve it for real.

The trained model artifact is staged exactly as a push would publish it (a registry version
with a manifest, in a temporary registry), verified as deploy verifies a published version
(every file's sha256, the content version), started in the real KServe model server process
on 127.0.0.1, and sent canned requests built from its own vocabulary. It passes only when
every answer is well-formed, the served scores equal the library's in-process scores, bad
requests are refused with 4xx while the server keeps serving, and the p99 of sequential
single-instance requests is within the configured budget. Any failure raises, so the
pipeline run fails before anything reaches the registry.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from recpipe.core.storage import StorageError
from recpipe.features.sequences import Vocabulary
from recpipe.registry import store as registry
from recpipe.serving.config import InfraValidationConfig
from recpipe.serving.index import ItemIndex, load_index
from recpipe.serving.local_server import LocalServer
from recpipe.serving.predictor import Query, Recommender
from recpipe.training.model import ModelBundle

MODEL_NAME = "infra-validation"
FALLBACKS = ("most_popular", "unavailable")  # the predictor's cold-start answers


class InfraValidationError(RuntimeError):
    """The model is not fit to serve; the message holds the failed checks."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class InfraValidationResult:
    passed: bool
    checks: list[Check]
    latency_ms: dict[str, float] = field(default_factory=dict)
    startup_seconds: float = 0.0
    model_version: str = ""

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a KFP Metrics artifact."""
        out = {"passed": float(self.passed), "startup_seconds": round(self.startup_seconds, 2)}
        for name, value in self.latency_ms.items():
            out[name if name == "requests" else f"latency_{name}_ms"] = round(value, 3)
        return out

    def raise_if_failed(self) -> None:
        if not self.passed:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in self.failures())
            raise InfraValidationError(f"infra validation failed: {failed}")

    def markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"# Infra validation: {verdict}",
            "",
            f"Model version (content hash): `{self.model_version or 'n/a'}`; "
            f"server ready after {self.startup_seconds:.1f} s.",
            "",
            "| check | result | detail |",
            "|---|---|---|",
        ]
        for c in self.checks:
            detail = c.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {c.name} | {'ok' if c.passed else '**FAILED**'} | {detail} |")
        if self.latency_ms:
            lines += ["", "Latency of sequential single-instance v1 requests (ms):", ""]
            lines.append("| " + " | ".join(self.latency_ms) + " |")
            lines.append("|" + "---|" * len(self.latency_ms))
            cells = [
                f"{v:.0f}" if k == "requests" else f"{v:.2f}" for k, v in self.latency_ms.items()
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def canned_queries(vocab: Vocabulary, config: InfraValidationConfig, count: int) -> list[Query]:
    """Deterministic requests drawn from the model's own vocabulary."""
    rng = random.Random(config.seed)
    items = list(vocab.items)
    length = min(config.history_length, max(len(items) - 1, 0))
    return [Query(rng.sample(items, length), config.k, []) for _ in range(count)]


def check_prediction(pred: Any, query: Query, vocab: Vocabulary) -> str | None:
    """None when `pred` is a well-formed answer to `query`, else what is wrong."""
    keys = {"items", "scores", "unknown_history"}
    if not isinstance(pred, dict) or not keys <= set(pred) <= {*keys, "fallback"}:
        got = sorted(pred) if isinstance(pred, dict) else type(pred).__name__
        return f"expected keys items, scores, unknown_history (and fallback); got {got}"
    items, scores = pred["items"], pred["scores"]
    if "fallback" in pred and pred["fallback"] not in FALLBACKS:
        return f"fallback is {str(pred['fallback'])[:40]!r}, not one of {list(FALLBACKS)}"
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        return "items is not a list of strings"
    if not isinstance(scores, list) or not all(
        isinstance(s, float | int) and math.isfinite(s) for s in scores
    ):
        return "scores is not a list of finite numbers"
    if len(items) != len(scores):
        return f"{len(items)} items but {len(scores)} scores"
    seen = {i for i in (*query.history, *query.exclude) if i in vocab}
    expected = min(query.k, len(vocab) - len(seen))
    if "fallback" in pred:  # the popular list is shorter than the catalogue; may be empty
        expected = min(expected, len(items))
    if len(items) != expected:
        return f"expected {expected} items for k={query.k}, got {len(items)}"
    if len(set(items)) != len(items):
        return "items repeat"
    if unknown := [i for i in items if i not in vocab]:
        return f"items not in the model's vocabulary: {unknown[:3]}"
    if leaked := [i for i in items if i in seen]:
        return f"history/exclude items recommended: {leaked[:3]}"
    if any(a < b for a, b in itertools.pairwise(scores)):
        return "scores are not sorted best first"
    want_unknown = sum(1 for i in query.history if i not in vocab)
    if pred["unknown_history"] != want_unknown:
        return f"unknown_history {pred['unknown_history']} != {want_unknown}"
    return None


class _Client:
    """One keep-alive HTTP/1.1 connection, as a client application would hold."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.timeout = timeout
        self.session = requests.Session()

    def post(self, path: str, body: bytes) -> tuple[int, Any]:
        resp = self.session.post(
            self.base + path,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        )
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, resp.text

    def get(self, path: str) -> int:
        return self.session.get(self.base + path, timeout=self.timeout).status_code

    def close(self) -> None:
        self.session.close()


def _v1_body(queries: list[Query]) -> bytes:
    return json.dumps(
        {"instances": [{"history": q.history, "k": q.k, "exclude": q.exclude} for q in queries]}
    ).encode()


def _run_checks(
    client: _Client,
    name: str,
    bundle: ModelBundle,
    config: InfraValidationConfig,
    index: ItemIndex | None = None,
) -> tuple[list[Check], dict[str, float]]:
    vocab = bundle.vocab
    path = f"/v1/models/{name}:predict"
    checks: list[Check] = []

    def check(label: str, fn: Callable[[], str | None]) -> None:
        try:
            problem = fn()
        except Exception as exc:  # a check that crashes is a failed check, with the reason
            problem = f"{type(exc).__name__}: {exc}"
        checks.append(Check(label, problem is None, problem or "ok"))

    batch = canned_queries(vocab, config, config.batch_size)
    answers: list[Any] = []

    def batch_check() -> str | None:
        status, body = client.post(path, _v1_body(batch))
        if status != 200:
            return f"HTTP {status}: {body}"
        preds = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(preds, list) or len(preds) != len(batch):
            return f"expected {len(batch)} predictions, got {body!r:.200}"
        answers.extend(preds)
        for i, (pred, q) in enumerate(zip(preds, batch, strict=True)):
            if problem := check_prediction(pred, q, vocab):
                return f"prediction {i}: {problem}"
        return None

    check(f"v1 batch of {len(batch)} well-formed", batch_check)

    def scores_check() -> str | None:
        if not answers:
            return "no answers to compare"
        local = Recommender(bundle, config.serving, index).recommend(batch)
        for i, (served, ref) in enumerate(zip(answers, local, strict=True)):
            if served["items"] != ref.items:
                return f"prediction {i}: served items differ from the library's"
            if not np.allclose(served["scores"], ref.scores, atol=1e-4):
                return f"prediction {i}: served scores differ from the library's"
        return None

    check("served scores equal the library's in-process scores", scores_check)

    def unknown_check() -> str | None:
        history = set(batch[0].history)
        extra = [i for i in vocab.items if i not in history][:1]
        q = Query([*batch[0].history, "\x00not-an-item"], config.k, extra)
        status, body = client.post(path, _v1_body([q]))
        if status != 200:
            return f"HTTP {status}: {body}"
        return check_prediction(body["predictions"][0], q, vocab)

    check("unknown history id counted, exclude honoured", unknown_check)

    def cold_start_check() -> str | None:
        q = Query(["\x00not-an-item", "\x00nor-this"], config.k, [])
        status, body = client.post(path, _v1_body([q]))
        if status != 200:
            return f"HTTP {status}: {body}"
        pred = body["predictions"][0]
        want = "most_popular" if bundle.popularity is not None else "unavailable"
        if pred.get("fallback") != want:
            return f"expected fallback {want!r} for a history of unknown ids, got {pred!r:.200}"
        return check_prediction(pred, q, vocab)

    check("cold start answered with the declared fallback", cold_start_check)

    def v2_check() -> str | None:
        q = batch[0]
        body = {
            "inputs": [
                {
                    "name": "history",
                    "shape": [len(q.history)],
                    "datatype": "BYTES",
                    "data": q.history,
                },
                {"name": "k", "shape": [1], "datatype": "INT32", "data": [q.k]},
            ]
        }
        status, answer = client.post(f"/v2/models/{name}/infer", json.dumps(body).encode())
        if status != 200:
            return f"HTTP {status}: {answer}"
        out = {o["name"]: o for o in answer["outputs"]}
        pred = {
            "items": out["items"]["data"],
            "scores": out["scores"]["data"],
            "unknown_history": out["unknown_history"]["data"][0],
        }
        return check_prediction(pred, q, vocab)

    check("v2 (Open Inference Protocol) well-formed", v2_check)

    def bad_request_check() -> str | None:
        bad = {"instances": [{"history": batch[0].history, "k": config.serving.max_k + 1}]}
        status, body = client.post(path, json.dumps(bad).encode())
        if not 400 <= status < 500 or "k" not in str(body):
            return f"k above max_k answered HTTP {status}: {body!r:.200}"
        status, body = client.post(path, b"{not json")
        if not 400 <= status < 500:
            return f"malformed JSON answered HTTP {status}: {body!r:.200}"
        status, _ = client.post(path, _v1_body(batch[:1]))
        return None if status == 200 else f"server stopped answering after bad requests: {status}"

    check("bad requests refused with 4xx, server keeps serving", bad_request_check)
    check(
        "health: /v2/health/ready",
        lambda: None if (s := client.get("/v2/health/ready")) == 200 else f"HTTP {s}",
    )

    latency: dict[str, float] = {}

    def latency_check() -> str | None:
        queries = canned_queries(vocab, config, config.warmup_requests + config.requests)
        bodies = [_v1_body([q]) for q in queries]
        for b in bodies[: config.warmup_requests]:
            client.post(path, b)
        timings = []
        for b in bodies[config.warmup_requests :]:
            t0 = time.perf_counter()
            status, answer = client.post(path, b)
            timings.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                return f"HTTP {status} during the latency run: {answer}"
        ms = np.asarray(timings)
        latency.update(
            {
                "requests": float(len(ms)),
                "p50": float(np.percentile(ms, 50)),
                "p90": float(np.percentile(ms, 90)),
                "p99": float(np.percentile(ms, 99)),
                "max": float(ms.max()),
                "budget_p99": config.p99_budget_ms,
            }
        )
        if latency["p99"] > config.p99_budget_ms:
            return f"p99 {latency['p99']:.2f} ms exceeds the budget of {config.p99_budget_ms} ms"
        return None

    check(f"p99 latency within {config.p99_budget_ms} ms", latency_check)
    if checks[-1].passed:
        detail = f"p99 {latency['p99']:.2f} ms over {int(latency['requests'])} requests"
        checks[-1] = Check(checks[-1].name, True, detail)
    return checks, latency


def index_recall_check(index: ItemIndex | None, min_recall: float) -> Check | None:
    """The bundle's item index (if any) is as good as configured: its recall@10 against
    exact search, measured on held-out users when it was built, is at least `min_recall`."""
    if index is None:
        return None
    recall = index.meta.recall_at_10
    detail = (
        f"recall@10 {recall:.4f} over {index.meta.recall_queries} held-out users "
        f"(nprobe {index.meta.nprobe} of {index.meta.nlist} lists), minimum {min_recall}"
    )
    return Check("item index recall@10 against exact search", recall >= min_recall, detail)


def validate_model(
    model_dir: Path, config: InfraValidationConfig, workdir: Path | None = None
) -> InfraValidationResult:
    """Serve the model artifact in a real model server and check it; never raises for a
    model problem (see `run_infra_validation`), only returns the failed checks."""
    work = Path(workdir or tempfile.mkdtemp(prefix="recpipe-infra-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bundle = ModelBundle.load(model_dir)
        index = load_index(model_dir, bundle)
    except Exception as exc:  # an unloadable artifact fails validation with the reason
        return InfraValidationResult(
            False, [Check("model artifact loads", False, f"{type(exc).__name__}: {exc}")]
        )
    recall_check = index_recall_check(index, config.min_index_recall)
    if recall_check is not None and not recall_check.passed:
        return InfraValidationResult(False, [recall_check])
    # Stage it as a push would publish it (a registry version with a manifest), and verify
    # it as deploy does; the server then loads it through the registry, verified again.
    publish = "artifact publishes and verifies (sha256 of every file, content version)"
    try:
        staged = registry.push(model_dir, str(work / "registry"), MODEL_NAME, {"stage": "infra"})
        registry.verify_version(staged.uri)
    except (registry.RegistryError, StorageError) as exc:
        return InfraValidationResult(False, [Check(publish, False, str(exc)[-1500:])])
    config_file = work / "serving.json"
    config_file.write_text(config.serving.to_json(), encoding="utf-8")
    server = LocalServer(staged.uri, name=MODEL_NAME, extra_args=["--config", str(config_file)])
    t0 = time.monotonic()
    try:
        server.start(timeout=config.startup_timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        return InfraValidationResult(
            False,
            [
                Check(publish, True, staged.version),
                Check("model server starts and reports ready", False, str(exc)[-1500:]),
            ],
            model_version=staged.version,
        )
    startup = time.monotonic() - t0
    client = _Client(server.port)
    try:
        checks, latency = _run_checks(client, MODEL_NAME, bundle, config, index)
    finally:
        client.close()
        server.stop()
    checks[:0] = [
        Check(publish, True, staged.version),
        Check("model server starts and reports ready", True, f"{startup:.1f} s"),
        *([recall_check] if recall_check is not None else []),
    ]
    return InfraValidationResult(
        all(c.passed for c in checks), checks, latency, startup, staged.version
    )


def run_infra_validation(
    model_dir: Path, config: InfraValidationConfig, report_path: Path | None = None
) -> InfraValidationResult:
    """Validate, write the Markdown report, and raise InfraValidationError on failure."""
    result = validate_model(model_dir, config)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(result.markdown(), encoding="utf-8")
    result.raise_if_failed()
    return result
