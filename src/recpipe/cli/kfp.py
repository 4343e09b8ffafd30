"""`recpipe upload | submit | schedule`: compiled pipelines onto a KFP cluster.

Flags become a `KfpConnection` and calls of `recpipe.kfp.client`; the stage configs of a
run are checked here with the pipeline's own models, so the client stays free of them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recpipe.cli.common import add_env_flag, warn_if_default_images
from recpipe.core.config import ConfigError
from recpipe.kfp.client import (
    KfpClient,
    Target,
    declared_parameters,
    kfp_cron,
    load_params_file,
    resolve_parameters,
    resolve_target,
    schedule_run,
    submit_run,
    upload_pipeline,
)
from recpipe.kfp.config import (
    DEFAULT_COOKIE_NAME,
    SA_TOKEN_PATH,
    SA_TOKEN_PATH_ENV,
    KfpConnection,
)
from recpipe.monitoring.config import MonitorConfig
from recpipe.pipelines.compile import compile_all
from recpipe.pipelines.config import STAGE_PARAMETERS, PipelineConfig
from recpipe.pipelines.environments import (
    Environment,
    RunSettings,
    load_config_file,
    load_pipeline_config,
)


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    """Host, namespace and one auth mode; secrets are named (variable, file), never given."""
    g = p.add_argument_group(
        "KFP connection",
        "Auth: at most one of --in-cluster, --token-env/--token-file, --cookie-env/--cookie-file. "
        "Secrets are read from the named variable or file at request time, never printed.",
    )
    g.add_argument(
        "--host",
        help="KFP API base URL, e.g. http://localhost:8888 or https://KUBEFLOW/pipeline "
        "(default: --env's run.kfp_host, then env KFP_HOST)",
    )
    g.add_argument(
        "--namespace",
        help="your profile namespace on multi-user Kubeflow (default: --env's "
        "run.kfp_namespace, then env KFP_NAMESPACE)",
    )
    g.add_argument(
        "--in-cluster",
        action="store_true",
        help=f"use the projected service account token ({SA_TOKEN_PATH}, or ${SA_TOKEN_PATH_ENV}; --token-file overrides)",
    )
    g.add_argument(
        "--token-env", metavar="VAR", help="read a bearer token from this environment variable"
    )
    g.add_argument(
        "--token-file", type=Path, metavar="PATH", help="read a bearer token from this file"
    )
    g.add_argument(
        "--cookie-env", metavar="VAR", help="read the session cookie from this environment variable"
    )
    g.add_argument(
        "--cookie-file", type=Path, metavar="PATH", help="read the session cookie from this file"
    )
    g.add_argument(
        "--cookie-name",
        default=DEFAULT_COOKIE_NAME,
        help=f"session cookie name (default {DEFAULT_COOKIE_NAME}; oauth2-proxy set-ups: oauth2_proxy_kubeflow)",
    )
    g.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")


def connection_from_args(a: argparse.Namespace, run: RunSettings | None = None) -> KfpConnection:
    """The validated connection; a flag mistake is a ConfigError (exit 2), not a traceback.
    A flag wins over the environment's run settings (`run`), which win over KFP_HOST and
    KFP_NAMESPACE: naming an environment must not be overridden by a shell's leftovers."""
    run = run or RunSettings()
    host = a.host or run.kfp_host or os.environ.get("KFP_HOST")
    namespace = a.namespace or run.kfp_namespace or os.environ.get("KFP_NAMESPACE")
    if not host:
        raise ConfigError("no KFP host: pass --host or set KFP_HOST (or --env with a run.kfp_host)")
    modes = [
        m
        for m, on in (
            ("in_cluster", a.in_cluster),
            ("bearer", a.token_env or (a.token_file and not a.in_cluster)),
            ("cookie", a.cookie_env or a.cookie_file),
        )
        if on
    ]
    if len(modes) > 1:
        raise ConfigError(f"choose one auth mode, got {modes}")
    fields: dict[str, Any] = {
        "host": host,
        "namespace": namespace,
        "auth": modes[0] if modes else "none",
        "token_file": a.token_file,
        "token_env": a.token_env,
        "cookie_env": a.cookie_env,
        "cookie_file": a.cookie_file,
        "cookie_name": a.cookie_name,
        "verify_tls": not a.insecure,
    }
    try:
        return KfpConnection(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'connection'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid KFP connection: {msgs}") from None


def _packages(compiled: str | None, tmp: str) -> list[Path]:
    """The --compiled folder's pipeline files, or the pipelines compiled now into `tmp`."""
    if compiled:
        folder = Path(compiled)
        if not folder.is_dir():
            raise FileNotFoundError(f"--compiled {folder}: no such folder")
        paths = sorted(folder.glob("*.yaml"))
        if not paths:
            raise ConfigError(f"--compiled {folder}: no *.yaml pipeline files")
        return paths
    warn_if_default_images()
    return compile_all(Path(tmp))


def _environment(a: argparse.Namespace) -> Environment | None:
    """--env's environment of --config (every environment of the file validated), or None."""
    if not getattr(a, "env", None):
        return None
    if not a.config:
        raise ConfigError(f"--env {a.env} needs --config FILE (the file with its environments)")
    return load_config_file(a.config).environment(a.env)


def _run_settings(env: Environment | None) -> RunSettings:
    return env.run if env is not None else RunSettings()


def cmd_upload(a: argparse.Namespace) -> int:
    client = KfpClient(connection_from_args(a, _run_settings(_environment(a))))
    with tempfile.TemporaryDirectory(prefix="recpipe-compiled-") as tmp:
        for path in _packages(a.compiled, tmp):
            r = upload_pipeline(client, path)
            state = "created" if r.created_version else "unchanged"
            print(
                f"{r.pipeline_name}: version {r.version_name} ({state}) id={r.version_id} pipeline_id={r.pipeline_id}"
            )
    return 0


def check_stage_configs(params: Mapping[str, Any], source: str) -> None:
    """Validate the run's stage configs (`*_config` JSON) with their pydantic models before
    anything reaches the cluster; a typo fails here, naming the field, not in a pod."""
    if any(k in params for k in (*STAGE_PARAMETERS, "model_name")):
        PipelineConfig.from_pipeline_arguments(dict(params), source=source)
    if "monitor_config" in params:  # the monitoring pipeline's own stage
        value = params["monitor_config"]
        text = value if isinstance(value, str) else json.dumps(value)
        MonitorConfig.from_json(text, source=f"{source}: monitor_config")


def _target_and_params(
    a: argparse.Namespace, client: KfpClient, env: Environment | None
) -> tuple[Target, dict[str, Any]]:
    """The version to run and its parameters: --config (with --env: that environment's
    overlay and its registry, data and drift-baseline URIs), then --params, then --param.
    The files and the stage configs in them are checked before the first request, so a
    typo is reported without contacting the server."""
    if env is not None:
        arguments = env.run_arguments()
    else:
        arguments = load_pipeline_config(a.config).pipeline_arguments() if a.config else {}
    given = load_params_file(Path(a.params)) if a.params else {}
    source = " + ".join(x for x in (a.config, a.params) if x) or "params"
    flags = dict(p.split("=", 1) for p in a.param or [] if "=" in p)
    check_stage_configs({**arguments, **given, **flags}, source=f"{source}, --param")
    target = resolve_target(client, a.pipeline, a.version)
    declared = declared_parameters(target.spec)  # a config sets only what the pipeline has
    file_values = {k: v for k, v in arguments.items() if k in declared} | given
    params = resolve_parameters(target.spec, file_values, a.param or [], file_source=source)
    check_stage_configs(params, source=f"run parameters ({source}, --param)")
    return target, params


def _experiment_and_account(
    a: argparse.Namespace, env: Environment | None
) -> tuple[str, str | None]:
    """--experiment and --service-account, else the environment's, else the defaults."""
    run = _run_settings(env)
    return a.experiment or run.experiment or "recpipe", a.service_account or run.service_account


def cmd_submit(a: argparse.Namespace) -> int:
    env = _environment(a)
    client = KfpClient(connection_from_args(a, _run_settings(env)))
    target, params = _target_and_params(a, client, env)
    experiment, account = _experiment_and_account(a, env)
    run = submit_run(client, target, experiment, params, a.run_name, account)
    where = f" ({env.name})" if env else ""
    print(
        f"run {run.run_id} ({run.display_name}) of {target.version_name} in experiment {experiment}{where}: {run.state}"
    )
    return 0


def cmd_schedule(a: argparse.Namespace) -> int:
    cron6, note = kfp_cron(a.cron)  # a bad cron fails before any request
    if note:
        print(f"note: {note}")
    env = _environment(a)
    client = KfpClient(connection_from_args(a, _run_settings(env)))
    target, params = _target_and_params(a, client, env)
    experiment, account = _experiment_and_account(a, env)
    name = a.name or f"{a.pipeline}-schedule"
    rr = schedule_run(
        client, target, experiment, params, cron6, name, a.max_concurrency, a.catchup, account
    )
    print(
        f"recurring run {rr.recurring_run_id} ({rr.display_name}): cron {cron6!r}, "
        f"max concurrency {rr.max_concurrency}, catch-up {'on' if not rr.no_catchup else 'off'}, "
        f"version {target.version_name}"
    )
    return 0


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """What `submit` and `schedule` share: the target, its parameters, the connection."""
    p.add_argument(
        "--pipeline", default="recpipe-training", help="pipeline name (default recpipe-training)"
    )
    p.add_argument("--version", help="version name (default: the newest version)")
    p.add_argument(
        "--experiment",
        help="experiment name, created if missing (default: --env's run.experiment, else recpipe)",
    )
    p.add_argument(
        "--config", help="PipelineConfig YAML/JSON: its stages become the *_config parameters"
    )
    _add_env_flag(p)
    p.add_argument("--params", help="YAML/JSON file: parameter name -> value (wins over --config)")
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a runtime parameter (repeatable; wins over --params)",
    )
    p.add_argument(
        "--service-account",
        help="Kubernetes service account of the run's pods (default: --env's run.service_account)",
    )
    add_connection_flags(p)


def _add_env_flag(p: argparse.ArgumentParser) -> None:
    add_env_flag(
        p,
        "its overlay of the config and its run settings (registry, data, KFP host and "
        "namespace, service account)",
    )


def add_commands(sub: Any) -> None:
    """`recpipe upload | submit | schedule`."""
    u = sub.add_parser("upload", help="upload compiled pipelines to KFP (content-named versions)")
    u.add_argument("--compiled", help="folder of compiled *.yaml (default: compile now)")
    u.add_argument("--config", help="PipelineConfig YAML/JSON with environments (for --env)")
    _add_env_flag(u)
    add_connection_flags(u)
    u.set_defaults(func=cmd_upload)

    s = sub.add_parser("submit", help="start a KFP run of an uploaded pipeline version")
    s.add_argument("--run-name", help="run display name (default: the version name)")
    _add_run_flags(s)
    s.set_defaults(func=cmd_submit)

    c = sub.add_parser("schedule", help="create a recurring KFP run (cron)")
    c.add_argument(
        "--cron",
        required=True,
        help="KFP cron: 6 fields, seconds first ('0 0 2 * * *' = 02:00 daily); "
        "a 5-field crontab expression gets a leading 0 seconds field",
    )
    c.add_argument("--name", help="recurring run name (default <pipeline>-schedule)")
    c.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    c.add_argument(
        "--catchup",
        action="store_true",
        help="run missed intervals after a pause (default: no catch-up)",
    )
    _add_run_flags(c)
    c.set_defaults(func=cmd_schedule)
