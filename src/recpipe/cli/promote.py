"""`recpipe registry promote VERSION --from staging --to prod --config FILE --reason ...`:
a model version from one environment's registry into the next one's, the same bytes,
once it has proven itself there. The environments (their registries and the target's
promotion rule) come from the config file's `environments:`; the work is
recpipe.registry.promote's. `add_promote_parser` is called by cli/registry.py."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Any

from recpipe.core.config import ConfigError, clip
from recpipe.pipelines.environments import Environment, load_config_file
from recpipe.registry import promote

ACTOR_VARIABLES = ("RECPIPE_ACTOR", "GITHUB_ACTOR", "USER")  # who, when --actor is not given


def _registry(env: Environment) -> promote.Registry:
    if env.run.registry_uri is None:
        raise ConfigError(f"environment {env.name!r} sets no run.registry_uri (its registry)")
    return promote.Registry(env.name, env.run.registry_uri)


def _actor(given: str | None) -> str:
    if given:
        return given
    for name in ACTOR_VARIABLES:
        if value := os.environ.get(name, "").strip():
            return value
    raise ConfigError("who is promoting? pass --actor or set one of " + ", ".join(ACTOR_VARIABLES))


def cmd_promote(a: argparse.Namespace) -> int:
    config = load_config_file(a.config)
    source, target = config.environment(a.source), config.environment(a.target)
    model_name = a.model_name or target.config.model_name
    if a.model_name is None and source.config.model_name != model_name:
        raise ConfigError(
            f"environments {source.name!r} and {target.name!r} name different models "
            f"({source.config.model_name}, {model_name}): pass --model-name"
        )
    rule = target.promotion
    policy = promote.Policy(
        min_serving_seconds=rule.min_serving_hours * 3600,
        require_blessing=rule.require_blessing,
        source=rule.source,
    )
    result = promote.promote(
        a.version,
        model_name,
        _registry(source),
        _registry(target),
        policy,
        actor=_actor(a.actor),
        reason=a.reason,
        force=a.force,
    )
    if a.json:
        print(json.dumps(asdict(result), indent=2, sort_keys=True))
        return 0
    how = (
        "shared registry: verified in place"
        if result.shared
        else "copied, every sha256 verified"
        if result.copied
        else "already there, verified"
    )
    print(f"{model_name}/{result.version}: {source.name} -> {target.name} ({how})")
    print(f"  {result.source_uri} -> {result.target_uri}")
    served = result.evidence.served_seconds / 3600
    print(
        f"  served {served:.1f} h as production in {source.name} since {result.evidence.first_served}"
    )
    if result.overridden:
        print("  FORCED past: " + "; ".join(clip(p, 200) for p in result.overridden))
    print("  recorded" if result.recorded else "  recorded before (nothing changed)")
    return 0


def add_promote_parser(sub: Any) -> argparse.ArgumentParser:
    """`promote` under `recpipe registry` (`sub`: that group's sub-parsers)."""
    p = sub.add_parser(
        "promote",
        help="bring a version from one environment's registry into the next (the same bytes)",
        description="Promote a model version across environments: it must be blessed and "
        "have served as the source's production for the target's promotion.min_serving_hours "
        "without a rollback; the target registry then holds the same bytes (every sha256 "
        "verified), and who and why are recorded in its history.",
    )
    p.add_argument("version", help="registry version (v-...)")
    p.add_argument("--from", dest="source", required=True, metavar="ENV", help="e.g. staging")
    p.add_argument("--to", dest="target", required=True, metavar="ENV", help="e.g. prod")
    p.add_argument(
        "--config", required=True, help="PipelineConfig YAML with the `environments:` overlays"
    )
    p.add_argument("--model-name", help="default: the config's model_name")
    p.add_argument("--actor", help="who promotes (default: $" + ", $".join(ACTOR_VARIABLES) + ")")
    p.add_argument("--reason", required=True, help="why (recorded in the target's history)")
    p.add_argument(
        "--force",
        action="store_true",
        help="promote a version that has not proven itself (recorded, with what was overridden)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_promote)
    return p


__all__ = ["add_promote_parser"]
