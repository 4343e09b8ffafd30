"""`recpipe rollout analyze|promote|rollback|status`: canary analysis, and deciding by hand,
from a terminal. Flags become a RolloutConfig and a registry target; the work is the
library's (recpipe.rollout.canary)."""

from __future__ import annotations

import argparse
from typing import Any

from recpipe.core import storage
from recpipe.core.config import load_config
from recpipe.pipelines.config import PipelineConfig
from recpipe.registry import store as registry
from recpipe.rollout.canary import (
    KServeTraffic,
    MetricsSource,
    PrometheusSource,
    RegistryTarget,
    RolloutError,
    ScrapeSource,
    Traffic,
    act_now,
    markdown_report,
    revisions,
    run_rollout,
)
from recpipe.rollout.config import RolloutConfig
from recpipe.rollout.prometheus import PrometheusApi
from recpipe.serving import inference_service


def _rollout_config(a: argparse.Namespace) -> RolloutConfig:
    """The config file's rollout section with the flags on top, validated again: a window
    shorter than the poll interval pulls the interval down rather than failing."""
    base = load_config(a.config, PipelineConfig).rollout if a.config else RolloutConfig()
    updates = {
        k: v
        for k, v in (("prometheus_url", a.prometheus_url), ("window_seconds", a.window_seconds))
        if v is not None
    }
    if a.window_seconds is not None and base.poll_seconds > a.window_seconds:
        updates["poll_seconds"] = a.window_seconds
    if not updates:
        return base
    return RolloutConfig.from_json(
        base.model_copy(update=updates).model_dump_json(), source="command-line flags"
    )


def _target(a: argparse.Namespace) -> RegistryTarget | None:
    """Where to record the decision; the version is checked to exist before traffic moves."""
    if not a.registry:
        return None
    if not a.version:
        raise RolloutError("--registry needs --version (the canary's registry version)")
    registry.read_manifest(registry.version_uri(a.registry, a.model_name, a.version))
    return RegistryTarget(a.registry, a.model_name, a.version)


class _NoTraffic:
    """--once: the split stays as it is."""

    def set(self, percent: int | None) -> None:
        pass


def cmd_analyze(a: argparse.Namespace) -> int:
    """Exit 3 on a rollback, so scripts can tell it from a failure to analyze (1)."""
    config = _rollout_config(a)
    source: MetricsSource
    if a.scrape:
        source = ScrapeSource(a.scrape[0], a.scrape[1], config)
    else:
        if not a.service:
            raise RolloutError("--service is needed to analyze through Prometheus (or --scrape)")
        if config.prometheus_url is None:
            raise RolloutError("no Prometheus: set rollout.prometheus_url or --prometheus-url")
        isvc = inference_service.get(a.service, a.namespace)
        if isvc is None:
            raise RolloutError(f"InferenceService {a.namespace}/{a.service} not found")
        stable, canary = revisions(isvc)
        api = PrometheusApi(config.prometheus_url, config.request_timeout_s)
        source = PrometheusSource(api, a.namespace, stable, canary, config)
    traffic: Traffic
    if a.once:
        traffic, target, steps = _NoTraffic(), None, (100,)
    else:
        if not a.service:
            raise RolloutError("--service is needed to move traffic (or use --once)")
        traffic, target, steps = KServeTraffic(a.service, a.namespace), _target(a), None
    result = run_rollout(traffic, source, config, target=target, steps=steps)
    report = markdown_report(result)
    if a.once:
        decision = result.steps[-1].decision
        verdict = "rollback" if decision.action == "rollback" else "healthy"
        print(f"one window: {verdict}: " + "; ".join(decision.reasons))
    else:
        print(f"{result.action}: {result.reason}")
    if a.report:
        storage.write_bytes(a.report, report.encode())
    return 3 if result.action == "rollback" else 0


def cmd_act(a: argparse.Namespace) -> int:
    act_now(a.action, KServeTraffic(a.service, a.namespace), a.reason, _target(a))
    print(f"{a.action}: {a.namespace}/{a.service} ({a.reason})")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    if not a.service and not a.registry:
        raise RolloutError("status needs --service and/or --registry")
    if a.service:
        isvc = inference_service.get(a.service, a.namespace)
        if isvc is None:
            print(f"InferenceService {a.namespace}/{a.service}: not found")
        else:
            predictor = isvc.get("spec", {}).get("predictor", {})
            percent = predictor.get("canaryTrafficPercent")
            print(
                f"InferenceService {a.namespace}/{a.service}: canaryTrafficPercent="
                f"{'unset (latest serves 100%)' if percent is None else percent}"
            )
            status = isvc.get("status", {}).get("components", {}).get("predictor", {})
            for t in status.get("traffic") or []:
                tag = "latest" if t.get("latestRevision") else "previous"
                print(f"  {t.get('revisionName')}: {t.get('percent')}% ({tag})")
    if a.registry:
        pointer = registry.production(a.registry, a.model_name)
        if pointer is None:
            print(f"registry {a.registry}/{a.model_name}: no production pointer yet")
        else:
            print(f"production: {pointer.get('version')} (since {pointer.get('since')})")
            for e in pointer.get("history", [])[-a.history :]:
                print(
                    f"  {e.get('at')} {e.get('action', 'set_production')} {e.get('version')}"
                    f" (previous {e.get('previous')}): {e.get('reason')}"
                )
    return 0


def _target_flags(p: argparse.ArgumentParser, version: bool) -> None:
    p.add_argument("--registry", help="registry root (folder or gs://): record the decision")
    p.add_argument("--model-name", default="recpipe-sasrec")
    if version:
        p.add_argument("--version", help="the canary's registry version (v-...)")


def _service_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--service", required=required, help="InferenceService name")
    p.add_argument("--namespace", default="recpipe")


def add_commands(sub: Any) -> None:
    r = sub.add_parser("rollout", help="canary analysis, promotion and rollback")
    rs = r.add_subparsers(dest="rollout_command", required=True)

    a = rs.add_parser(
        "analyze",
        help="walk the traffic steps and promote or roll back (or judge one window: --once)",
    )
    _service_flags(a, required=False)
    _target_flags(a, version=True)
    a.add_argument("--config", help="PipelineConfig YAML/JSON (its rollout section)")
    a.add_argument("--prometheus-url", help="overrides rollout.prometheus_url")
    a.add_argument("--window-seconds", type=float, help="overrides rollout.window_seconds")
    a.add_argument(
        "--scrape",
        nargs=2,
        metavar=("STABLE_URL", "CANARY_URL"),
        help="read two /metrics endpoints directly instead of Prometheus (local servers)",
    )
    a.add_argument(
        "--once", action="store_true", help="judge one window; change no traffic, record nothing"
    )
    a.add_argument("--report", help="also write the Markdown report here")
    a.set_defaults(func=cmd_analyze)

    for action in ("promote", "rollback"):
        p = rs.add_parser(
            action, help=f"{action.replace('rollback', 'roll back')} the canary now, with a reason"
        )
        _service_flags(p)
        _target_flags(p, version=True)
        p.add_argument("--reason", required=True, help="recorded in the registry history")
        p.set_defaults(func=cmd_act, action=action)

    s = rs.add_parser("status", help="traffic split and the registry's production history")
    _service_flags(s, required=False)
    _target_flags(s, version=False)
    s.add_argument("--history", type=int, default=10, help="show the last N decisions")
    s.set_defaults(func=cmd_status)


__all__ = ["add_commands"]
