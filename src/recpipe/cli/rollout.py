"""`recpipe deploy` and `recpipe rollout analyze|promote|rollback|status`: a registry version
onto the cluster, canary analysis, and deciding by hand, from a terminal. Flags (or an
environment of the config file: `--env staging`) become a DeployConfig, a RolloutConfig and
a registry target; the work is the library's (serving.inference_service, rollout.canary)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recpipe.cli.common import add_env_flag
from recpipe.core import storage
from recpipe.core.config import ConfigError
from recpipe.core.images import build_settings
from recpipe.pipelines.config import PipelineConfig
from recpipe.pipelines.environments import RunSettings, load_config_file, load_pipeline_config
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


def _resolve(a: argparse.Namespace) -> PipelineConfig:
    """The config (--config; with --env, that environment's overlay). --namespace,
    --registry and --model-name left unset come from it: deploy.namespace, the
    environment's run.registry_uri, model_name (without a file: the defaults)."""
    config, run = load_pipeline_config(getattr(a, "config", None)), RunSettings()
    if getattr(a, "env", None):
        if not a.config:
            raise ConfigError(f"--env {a.env} needs --config FILE (the file with its environments)")
        env = load_config_file(a.config).environment(a.env)
        config, run = env.config, env.run
    if getattr(a, "namespace", "") is None:
        a.namespace = config.deploy.namespace
    if getattr(a, "registry", "") is None:
        a.registry = run.registry_uri
    if getattr(a, "model_name", "") is None:
        a.model_name = config.model_name
    return config


def _rollout_config(a: argparse.Namespace) -> RolloutConfig:
    """The config file's rollout section with the flags on top, validated again: a window
    shorter than the poll interval pulls the interval down rather than failing."""
    base = _resolve(a).rollout
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
    _resolve(a)
    act_now(a.action, KServeTraffic(a.service, a.namespace), a.reason, _target(a))
    print(f"{a.action}: {a.namespace}/{a.service} ({a.reason})")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    _resolve(a)
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


def cmd_deploy(a: argparse.Namespace) -> int:
    """The deploy step from a terminal or CI: a published version (verified, not retired)
    as the environment's InferenceService, with the predictor image its manifest records
    (what infra validation and every earlier environment served it with)."""
    config = _resolve(a)
    if not a.registry:
        raise ConfigError("no registry: pass --registry or --env with a run.registry_uri")
    uri = registry.version_uri(a.registry, a.model_name, a.version)
    recorded = registry.read_manifest(uri).get("image")
    deploy = config.deploy.model_copy(update={"apply": False}) if a.manifest_only else config.deploy
    image = a.image or deploy.predictor_image or (recorded if isinstance(recorded, str) else None)
    image = image or build_settings().predictor_image
    service = a.service or a.model_name
    isvc, action = inference_service.deploy_version(
        service, uri, deploy, config.infra_validation.serving, image=image
    )
    if a.output:
        storage.write_bytes(a.output, json.dumps(inference_service.to_dict(isvc), indent=2).encode())
    if action == "created":  # it serves 100% now: production, as a first push makes it
        reason = f"recpipe deploy: InferenceService {deploy.namespace}/{service} created"
        registry.set_production(a.registry, a.model_name, a.version, reason)
    print(f"InferenceService {deploy.namespace}/{service}: {action} ({a.version}, image {image})")
    return 0


def _target_flags(p: argparse.ArgumentParser, version: bool) -> None:
    p.add_argument(
        "--registry",
        help="registry root (folder or gs://): record the decision (default: --env's "
        "run.registry_uri)",
    )
    p.add_argument("--model-name", help="default: the config's model_name (recpipe-sasrec)")
    if version:
        p.add_argument("--version", help="the canary's registry version (v-...)")


def _service_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--service", required=required, help="InferenceService name")
    p.add_argument("--namespace", help="default: the config's deploy.namespace (recpipe)")


def _env_flags(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", help="PipelineConfig YAML/JSON (with environments for --env)")
    add_env_flag(p, "its overlay (namespace, canary steps, Prometheus, thresholds) and its registry")


def _add_deploy(sub: Any) -> None:
    d = sub.add_parser(
        "deploy",
        help="deploy a registry version as the InferenceService (first at 100%%, then a canary)",
    )
    d.add_argument("version", help="registry version (v-...)")
    d.add_argument("--service", help="InferenceService name (default: the model name)")
    d.add_argument("--namespace", help="default: the config's deploy.namespace (recpipe)")
    _target_flags(d, version=False)
    _env_flags(d)
    d.add_argument("--image", help="predictor image (default: the one the manifest records)")
    d.add_argument(
        "--manifest-only", action="store_true", help="write the InferenceService; apply nothing"
    )
    d.add_argument("--output", help="also write the InferenceService JSON here")
    d.set_defaults(func=cmd_deploy)


def add_commands(sub: Any) -> None:
    _add_deploy(sub)
    r = sub.add_parser("rollout", help="canary analysis, promotion and rollback")
    rs = r.add_subparsers(dest="rollout_command", required=True)

    a = rs.add_parser(
        "analyze",
        help="walk the traffic steps and promote or roll back (or judge one window: --once)",
    )
    _service_flags(a, required=False)
    _target_flags(a, version=True)
    a.add_argument("--config", help="PipelineConfig YAML/JSON (its rollout section)")
    _env_flags(a, config=False)
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
        _env_flags(p)
        p.set_defaults(func=cmd_act, action=action)

    s = rs.add_parser("status", help="traffic split and the registry's production history")
    _service_flags(s, required=False)
    _target_flags(s, version=False)
    s.add_argument("--history", type=int, default=10, help="show the last N decisions")
    _env_flags(s)
    s.set_defaults(func=cmd_status)


__all__ = ["add_commands"]
