"""Acting on a monitoring verdict: what `MonitorConfig.action` says a breach triggers.

- `alert`: nothing changes; the result says the check failed, and the component writes the
  failed-check artifact and fails its task (`MonitorAlert`).
- `retrain`: start the training pipeline on the fresh events through the KFP REST client
  (`recpipe.kfp.client`), once per breach: a monitor scheduled every hour sees the same
  breached window many times and must not start a training run each time.
- `rollback`: send the traffic back to the previous production version with the rollout
  code, when that version is still in the registry: a breached canary gets 0% (KServe's
  rollback, recorded in the registry's history as the canary analysis records it); a
  breached production version is replaced by the one it replaced, and the production
  pointer moves back. When there is nothing to go back to, it alerts with the reason.

Each breach has a key: (model version, endpoint, window, metric). Retrain and rollback
record the keys they acted on in one generation-checked JSON document, the ledger
(`<state_uri>/actions.json`, core.storage.update_json), *before* they act (a claim) and
again after (the run id); a second monitoring run, concurrent or later, finds its breaches
there and starts nothing new. A claim whose action failed is released; one left by a
monitor that died mid-way is taken over after `CLAIM_TIMEOUT_S`, and the run it may have
started is looked up by its deterministic name first.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from pydantic import ValidationError

from recpipe.core import storage
from recpipe.core.config import ConfigError, check_size, clip, describe_error
from recpipe.kfp.client import (
    KfpClient,
    declared_parameters,
    resolve_parameters,
    resolve_target,
    submit_run,
)
from recpipe.kfp.config import KfpConnection
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.judge import Breach, Outcome, Verdict
from recpipe.registry import store as registry
from recpipe.rollout.canary import KServeTraffic, RegistryTarget, record
from recpipe.serving import inference_service

LEDGER_FILE = "actions.json"
MAX_LEDGER_BYTES = 4 << 20
MAX_LEDGER_ENTRIES = 2_000  # the newest; older breaches are long settled
CLAIM_TIMEOUT_S = 600.0  # a submission or a traffic change takes seconds, not minutes
MAX_RUN_NAME = 100
MAX_REASONS = 20  # breaches listed in an alert or a recorded reason


class MonitorAlert(RuntimeError):
    """A breach the monitor alerts on (or could not act on): the task fails with it."""


@dataclass(frozen=True)
class RetrainTarget:
    """Where a retraining run goes: the training pipeline on KFP, with the fresh events as
    its `data_uri_parameter` and `parameters` fixed (registry_uri, stage configs, ...)."""

    connection: KfpConnection
    data_uri: str
    pipeline: str = "recpipe-training"
    pipeline_version: str | None = None
    experiment: str = "recpipe-monitoring"
    data_uri_parameter: str = "data_uri"
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RollbackTarget:
    """The InferenceService and the registry a rollback changes."""

    registry_uri: str
    model_name: str
    service_name: str
    namespace: str
    api: k8s.CustomObjectsApi | None = None


@dataclass(frozen=True)
class ActResult:
    """What was done: `action` is what happened ('alert' also when retrain or rollback
    could not act), `failed` whether the task must fail, `detail` why, in a sentence."""

    action: Outcome
    failed: bool
    detail: str
    run_id: str | None = None
    run_name: str | None = None
    keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self, verdict: Verdict) -> str:
        """The failed-check artifact: what breached and what was (not) done about it."""
        lines = [f"# Monitoring check: {verdict.headline()}", "", f"**Action**: {self.detail}", ""]
        lines += [f"- {clip(b.reason, 500)}" for b in verdict.breaches[:MAX_REASONS]]
        if len(verdict.breaches) > MAX_REASONS:
            lines.append(f"- ... and {len(verdict.breaches) - MAX_REASONS} more")
        return "\n".join(lines).rstrip() + "\n"


IN_CLUSTER_KFP = KfpConnection(
    host="http://ml-pipeline.kubeflow.svc.cluster.local:8888", auth="in_cluster"
)
MAX_PARAMETER_BYTES = 1 << 20


def action_targets(
    config: MonitorConfig,
    *,
    events_uri: str,
    registry_uri: str,
    model_name: str,
    source_json: str = "",
    service_name: str = "",
    namespace: str = "",
    kfp_connection: str = "",
    training_pipeline: str = "recpipe-training",
    training_experiment: str = "recpipe-monitoring",
    training_parameters: str = "",
) -> tuple[RetrainTarget | None, RollbackTarget | None]:
    """The targets of the configured action from the pipeline's string parameters (None
    where the action is another one or its parameters are empty); errors name the
    parameter. A retraining run gets the registry, model name and source the monitor used,
    then `training_parameters` (a JSON object) on top; its data is the fresh events."""
    retrain = rollback = None
    if config.action == "retrain" and kfp_connection:
        connection = _parsed(kfp_connection, "kfp_connection")
        try:
            conn = KfpConnection.model_validate(connection)
        except ValidationError as exc:
            raise ConfigError(describe_error(exc, "kfp_connection", "KfpConnection")) from None
        fixed = _parsed(training_parameters or "{}", "training_parameters")
        defaults = {"registry_uri": registry_uri, "model_name": model_name}
        if source_json:
            defaults["source_config"] = source_json
        retrain = RetrainTarget(
            connection=conn,
            data_uri=events_uri,
            pipeline=training_pipeline,
            experiment=training_experiment,
            parameters={**defaults, **fixed},
        )
    if config.action == "rollback" and service_name and namespace:
        rollback = RollbackTarget(registry_uri, model_name, service_name, namespace)
    return retrain, rollback


def _parsed(text: str, name: str) -> dict[str, Any]:
    """A JSON object parameter, its size checked before it is parsed."""
    check_size(len(text), name, MAX_PARAMETER_BYTES)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{name} is not JSON: {clip(exc)}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, not {type(value).__name__}")
    return value


# -- breach keys and the ledger ---------------------------------------------------------------


def breach_key(b: Breach) -> str:
    """A short, stable key of one breach: version, endpoint, window and metric."""
    text = "\x1f".join((b.model_version, b.endpoint, b.window_start, b.metric))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run_name_for(pipeline: str, breaches: list[Breach]) -> str:
    """Readable and deterministic: the pipeline, the first breach's version, window and
    metric, and a hash of every breach the run answers."""
    first = min(breaches, key=lambda b: (b.window_start, b.model_version, b.endpoint, b.metric))
    window = re.sub(r"[^0-9T]", "", first.window_start)[:13]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{first.model_version[:24]}-{window}-{first.metric}".lower())
    digest = hashlib.sha256(" ".join(sorted(map(breach_key, breaches))).encode()).hexdigest()[:8]
    return f"{pipeline[:40]}-retrain-{slug.strip('-')}-{digest}"[:MAX_RUN_NAME]


def _entry(b: Breach, action: str, name: str, at: float) -> dict[str, Any]:
    return {
        "action": action,
        "name": name,
        "claimed_at": at,
        "model_version": clip(b.model_version, 128),
        "endpoint": b.endpoint,
        "window_start": b.window_start,
        "metric": b.metric,
    }


class _Unchanged(Exception):
    """Refuses an update_json write: nothing to claim."""


@dataclass
class _Claim:
    taken: list[Breach]  # breaches this run claimed (now its to act on)
    settled: dict[str, dict[str, Any]]  # key -> entry of breaches acted on before
    busy: dict[str, dict[str, Any]]  # key -> entry another monitor is acting on now
    name: str = ""
    generation: int = 0


class Ledger:
    """The actions' generation-checked JSON document: breach key -> what was done."""

    def __init__(self, uri: str, clock: Callable[[], float] = time.time) -> None:
        self.uri = uri
        self.clock = clock

    def entries(self) -> dict[str, dict[str, Any]]:
        doc = storage.read_json(self.uri, max_bytes=MAX_LEDGER_BYTES)
        return self._checked(doc.data if doc else None)

    def _checked(self, data: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        breaches = (data or {}).get("breaches", {})
        if not isinstance(breaches, dict) or not all(
            isinstance(v, dict) for v in breaches.values()
        ):
            raise storage.StorageError(f"{self.uri}: 'breaches' must map keys to objects")
        return breaches

    def claim(
        self, breaches: list[Breach], action: str, name_for: Callable[[list[Breach]], str]
    ) -> _Claim:
        """Claim the breaches nobody acted on (or whose claim went stale) in one write."""
        by_key = {breach_key(b): b for b in breaches}
        out = _Claim([], {}, {})

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            entries = dict(self._checked(current))
            now = self.clock()
            out.taken, out.settled, out.busy = [], {}, {}
            for key, b in sorted(by_key.items()):
                e = entries.get(key)
                if e is None or (
                    not e.get("done") and now - float(e.get("claimed_at", 0)) > CLAIM_TIMEOUT_S
                ):
                    out.taken.append(b)
                elif e.get("done"):
                    out.settled[key] = e
                else:
                    out.busy[key] = e
            if not out.taken:
                raise _Unchanged
            out.name = name_for(out.taken)
            for b in out.taken:
                entries[breach_key(b)] = _entry(b, action, out.name, now)
            newest = sorted(entries.items(), key=lambda kv: float(kv[1].get("claimed_at", 0)))
            return {"breaches": dict(newest[-MAX_LEDGER_ENTRIES:])}

        try:
            doc = storage.update_json(self.uri, change, max_bytes=MAX_LEDGER_BYTES)
        except _Unchanged:
            return out
        out.generation = doc.generation
        return out

    def settle(self, claim: _Claim, **fields: Any) -> None:
        """Record what was done on the claimed breaches (their entries become `done`)."""
        keys = {breach_key(b) for b in claim.taken}

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            entries = dict(self._checked(current))
            for key in keys:
                if key in entries and entries[key].get("name") == claim.name:
                    entries[key] = {**entries[key], **fields, "done": True, "at": _now()}
            return {"breaches": entries}

        storage.update_json(self.uri, change, max_bytes=MAX_LEDGER_BYTES)

    def release(self, claim: _Claim) -> None:
        """Drop the claimed entries again (the action failed: a later run may retry)."""
        keys = {breach_key(b) for b in claim.taken}

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            entries = self._checked(current)
            return {
                "breaches": {
                    k: e
                    for k, e in entries.items()
                    if not (k in keys and e.get("name") == claim.name and not e.get("done"))
                }
            }

        storage.update_json(self.uri, change, max_bytes=MAX_LEDGER_BYTES)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _reasons(breaches: list[Breach]) -> str:
    shown = "; ".join(clip(b.reason, 300) for b in breaches[:MAX_REASONS])
    more = f"; and {len(breaches) - MAX_REASONS} more" if len(breaches) > MAX_REASONS else ""
    return shown + more


# -- the actions -------------------------------------------------------------------------------


def act(
    verdict: Verdict,
    config: MonitorConfig,
    *,
    state_uri: str | None = None,
    retrain: RetrainTarget | None = None,
    rollback: RollbackTarget | None = None,
    client: KfpClient | None = None,
    clock: Callable[[], float] = time.time,
) -> ActResult:
    """Do what `config.action` says about `verdict`'s breaches (see the module docstring).
    Retrain and rollback need `state_uri` (the ledger) and their target; without them, or
    when they cannot act, the result is an alert naming the reason."""
    if not verdict.breached:
        return ActResult("none", False, verdict.headline())
    if config.action == "alert":
        n = len(verdict.breaches)
        return ActResult("alert", True, f"alert: {n} breach(es) fail the check")
    if not state_uri:
        return _cannot(config.action, "no state_uri to record it in (one action per breach)")
    ledger = Ledger(storage.join(state_uri, LEDGER_FILE), clock)
    if config.action == "retrain":
        if retrain is None:
            return _cannot("retrain", "no training pipeline configured (the KFP connection)")
        return _retrain(verdict, retrain, ledger, client or KfpClient(retrain.connection))
    if rollback is None:
        return _cannot("rollback", "no InferenceService and registry configured")
    return _rollback(verdict, rollback, ledger)


def _cannot(action: str, why: str) -> ActResult:
    return ActResult("alert", True, f"cannot {action}: {why}")


def _already(claim: _Claim, what: str) -> ActResult:
    """Every breach was acted on, or is being acted on by another monitoring run."""
    done = sorted({str(e.get("run_id") or e.get("name")) for e in claim.settled.values()})
    busy = sorted({str(e.get("name")) for e in claim.busy.values()})
    parts = []
    if done:
        parts.append(f"{what} already done for these breaches ({clip(', '.join(done), 300)})")
    if busy:
        parts.append(f"another monitoring run is doing it now ({clip(', '.join(busy), 300)})")
    entries = list(claim.settled.values())
    run_id = next((str(e["run_id"]) for e in entries if e.get("run_id")), None)
    return ActResult(
        "none", False, "; ".join(parts), run_id=run_id, keys=sorted([*claim.settled, *claim.busy])
    )


def _retrain(
    verdict: Verdict, target: RetrainTarget, ledger: Ledger, client: KfpClient
) -> ActResult:
    """One training run for the breaches no run answered yet; none when all were."""
    claim = ledger.claim(verdict.breaches, "retrain", lambda bs: run_name_for(target.pipeline, bs))
    if not claim.taken:
        return _already(claim, "retraining")
    try:
        run_id = _find_run(client, target.experiment, claim.name)
        if run_id is None:  # normally: a stale claim's monitor may have started it first
            spec_target = resolve_target(client, target.pipeline, target.pipeline_version)
            declared = declared_parameters(spec_target.spec)
            values = {
                **{k: v for k, v in target.parameters.items() if k in declared},
                target.data_uri_parameter: target.data_uri,
            }
            params = resolve_parameters(spec_target.spec, values, file_source="retrain parameters")
            run = submit_run(client, spec_target, target.experiment, params, run_name=claim.name)
            run_id = str(run.run_id)
    except BaseException:
        ledger.release(claim)
        raise
    ledger.settle(claim, run_id=run_id)
    keys = sorted(breach_key(b) for b in claim.taken)
    detail = (
        f"retrain: started {claim.name} (run {run_id}) of {target.pipeline} on "
        f"{clip(target.data_uri, 200)} for {len(claim.taken)} breach(es): "
        f"{_reasons(claim.taken)}"
    )
    return ActResult("retrain", False, detail, run_id=run_id, run_name=claim.name, keys=keys)


def _find_run(client: KfpClient, experiment: str, name: str) -> str | None:
    exp = client.find_experiment(experiment)
    if exp is None:
        return None
    ids = client.find_runs(str(exp.experiment_id), name)
    return ids[0] if ids else None


@dataclass(frozen=True)
class _Plan:
    """What a rollback does: `canary` sends the canary's share to 0 (the stable revision
    serves), `production` redeploys `to_version` in place of `from_version`. A canary's
    breach comes first: the stable version then still serves."""

    kind: str  # "canary" | "production"
    from_version: str
    to_version: str


def _plan_rollback(breaches: list[Breach], target: RollbackTarget) -> _Plan | str:
    """The rollback the breaches call for, or why there is none to do (a sentence)."""
    pointer = registry.production(target.registry_uri, target.model_name) or {}
    production = pointer.get("version")
    canary = [b for b in breaches if b.endpoint == "canary"]
    version = (canary or breaches)[0].model_version
    try:
        registry.check_version(version, "breached model version")
    except registry.RegistryError as exc:
        return str(exc)
    if canary:
        if not production or production == version:
            return f"the breached canary {clip(version, 80)} has no other production version to return to"
        return _Plan("canary", version, production)
    if version != production:
        return (
            f"{clip(version or 'an unversioned model', 80)} breached on the default endpoint but "
            f"production is {production or 'not set'}: nothing of it to roll back"
        )
    moved = [
        e
        for e in registry.history_events(pointer)
        if e.get("version") == version
        and e.get("action", "set_production") in ("set_production", "promote")
    ]  # how it became production; a rollback *to* it names no version before it
    previous = moved[-1].get("previous") if moved else None
    if not previous or previous == version:
        return f"production {version} has no previous production version in the registry's history"
    return _Plan("production", version, str(previous))


def _rollback(verdict: Verdict, target: RollbackTarget, ledger: Ledger) -> ActResult:
    """Back to the previous production version, once per breach (see the module docstring).
    Breaches already rolled back for are left out first: after a rollback the breached
    version no longer serves, and its breach is settled, not a reason to alert."""
    entries = ledger.entries()
    pending = [b for b in verdict.breaches if not entries.get(breach_key(b), {}).get("done")]
    if not pending:
        return _already(
            _Claim([], {breach_key(b): entries[breach_key(b)] for b in verdict.breaches}, {}),
            "the rollback",
        )
    plan = _plan_rollback(pending, target)
    if isinstance(plan, str):
        return _cannot("roll back", plan)
    to_uri = registry.version_uri(target.registry_uri, target.model_name, plan.to_version)
    try:  # "still in the registry": its manifest reads and (when redeployed) its files verify
        if plan.kind == "production":
            registry.verify_version(to_uri)
        else:
            registry.read_manifest(to_uri)
    except registry.RegistryError as exc:
        return _cannot(
            "roll back",
            f"the previous production version {plan.to_version} is no longer usable in the "
            f"registry: {clip(exc, 300)}",
        )
    api = target.api or inference_service.cluster_api()
    isvc = inference_service.get(target.service_name, target.namespace, api)
    where = f"{target.namespace}/{target.service_name}"
    if isvc is None:
        return _cannot("roll back", f"InferenceService {where} not found")
    if plan.kind == "canary":
        served = inference_service.storage_uri_of(isvc)
        from_uri = registry.version_uri(target.registry_uri, target.model_name, plan.from_version)
        percent = isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
        if served != from_uri or percent is None:
            return ActResult(
                "none",
                False,
                f"{where} no longer runs {plan.from_version} as its canary: nothing to roll back",
            )
        if percent == 0:
            return ActResult("none", False, f"the canary {plan.from_version} already gets 0%")
    # One rollback answers the verdict: its other breaches (the stable version's, during a
    # canary) are settled with it; if they persist, the next window breaches anew.
    claim = ledger.claim(pending, "rollback", lambda bs: f"rollback-{plan.from_version}")
    if not claim.taken:
        return _already(claim, "the rollback")
    reason = f"monitoring: {_reasons(claim.taken)}"
    details = {"breaches": [asdict(b) for b in claim.taken[:MAX_REASONS]]}
    try:
        if plan.kind == "canary":  # the rollout's own rollback, recorded in the history
            KServeTraffic(target.service_name, target.namespace, api).set(0)
            record(
                RegistryTarget(target.registry_uri, target.model_name, plan.from_version),
                "rollback",
                reason,
                details,
            )
        else:
            _roll_back_production(target, api, isvc, plan, to_uri, reason, details)
    except BaseException:
        ledger.release(claim)
        raise
    ledger.settle(claim, to_version=plan.to_version)
    what = "canary traffic to 0%" if plan.kind == "canary" else f"redeployed {plan.to_version}"
    detail = (
        f"rollback: {plan.from_version} -> {plan.to_version} on {where} ({what}); "
        f"{_reasons(claim.taken)}"
    )
    return ActResult("rollback", False, detail, keys=sorted(breach_key(b) for b in claim.taken))


def _roll_back_production(
    target: RollbackTarget,
    api: k8s.CustomObjectsApi,
    isvc: dict[str, Any],
    plan: _Plan,
    to_uri: str,
    reason: str,
    details: dict[str, Any],
) -> None:
    """Serve the previous production version at 100% (`inference_service.redeploy`: a new
    revision with its model in place of the breached one), then point production back at it."""
    inference_service.redeploy(isvc, to_uri, api)
    registry.set_production(
        target.registry_uri,
        target.model_name,
        plan.to_version,
        reason,
        action="rollback",
        details={**details, "from": plan.from_version},
    )
