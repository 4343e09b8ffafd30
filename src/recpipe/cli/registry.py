"""`recpipe registry list|show|retire|gc` (and `promote`, from cli/promote.py): the versions
of a model in the registry (local folder or gs://), their states and lineage, retirement
and deletion. The work is the library's (recpipe.registry.lifecycle and .lineage); on a
cluster the versions live InferenceServices reference are read through the Kubernetes API
(serving.inference_service) and protected like production."""

from __future__ import annotations

import argparse
import getpass
import importlib
import importlib.util
import json
from typing import Any

from recpipe.core.config import clip, load_config
from recpipe.pipelines.config import PipelineConfig
from recpipe.registry import lifecycle, lineage
from recpipe.registry import store as registry
from recpipe.registry.config import RetentionConfig
from recpipe.serving import inference_service

# cli/promote.py (environments' `registry promote`) is optional here: see add_commands.
_PROMOTE = (
    importlib.import_module("recpipe.cli.promote")
    if importlib.util.find_spec("recpipe.cli.promote") is not None
    else None
)


def _referenced(a: argparse.Namespace) -> set[str]:
    """Versions live InferenceServices in --namespace serve (--cluster), plus --keep."""
    found = set(a.keep or [])
    if a.cluster:
        uris = inference_service.storage_uris(a.namespace)
        found |= lifecycle.referenced_versions(uris, a.registry, a.model_name)
    return found


def _retention(a: argparse.Namespace) -> RetentionConfig:
    return load_config(a.config, PipelineConfig).retention if a.config else RetentionConfig()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _metrics_text(metrics: dict[str, Any], limit: int = 2) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()]
    return ", ".join(sorted(shown)[:limit])


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cmd_list(a: argparse.Namespace) -> int:
    rows = lifecycle.list_versions(
        a.registry, a.model_name, environment=a.env or "", referenced=_referenced(a)
    )
    if a.json:
        _print_json([r.to_dict() for r in rows])
        return 0
    if not rows:
        print(f"no versions of {a.model_name} in {a.registry}")
        return 0
    table = [["VERSION", "STATE", "ENV", "CREATED", "METRICS", "BLESSED", "DATA", "RUN"]]
    for r in rows:
        state = r.state + (f" ({clip(r.retired.get('reason', ''), 40)})" if r.retired else "")
        data = ",".join(sorted(r.data_fingerprint))
        table.append(
            [
                r.version,
                state,
                r.environment or "-",
                r.created or "-",
                _metrics_text(r.metrics) or "-",
                {True: "yes", False: "no", None: "-"}[r.blessed],
                clip(f"{len(r.data_fingerprint)} files: {data}", 40) if data else "-",
                clip(r.run_id, 40) or "-",
            ]
        )
    print(_table(table))
    return 0


def _lineage_text(steps: list[dict[str, Any]]) -> str:
    lines = []
    for s in steps:
        kind = s["step"]
        if kind == "raw data":
            lines.append(f"raw data: {len(s['partitions'])} partition(s)")
            lines += [f"  {uri}  {digest}" for uri, digest in sorted(s["partitions"].items())]
        elif kind == "decision":
            details = s.get("details") or {}
            extra = f" [{details.get('service')}]" if details.get("service") else ""
            lines.append(
                f"-> {s.get('at')} {s.get('action')} {s.get('version')}{extra}: "
                f"{clip(s.get('reason', ''), 200)}"
            )
        else:
            fields = ", ".join(
                f"{k}={clip(v if isinstance(v, str) else json.dumps(v, sort_keys=True), 200)}"
                for k, v in s.items()
                if k != "step" and v not in ("", None, {}, [])
            )
            lines.append(f"-> {kind}: {fields or '(not recorded)'}")
    return "\n".join(lines)


def cmd_show(a: argparse.Namespace) -> int:
    registry.check_version(a.version)
    found = lineage.version_lineage(a.registry, a.model_name, a.version)
    pointer = registry.production(a.registry, a.model_name)
    found["state"] = lifecycle.state_of(a.version, pointer)
    if a.json:
        if not a.lineage:
            found.pop("lineage")
        _print_json(found)
        return 0
    print(f"{a.model_name} {a.version}: {found['state']} ({found['uri']})")
    if a.lineage:
        print(_lineage_text(found["lineage"]))
    else:
        print(json.dumps(found["manifest"], indent=2, sort_keys=True))
    return 0


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_retire(a: argparse.Namespace) -> int:
    referenced = _referenced(a)
    if a.undo:
        if len(a.version) != 1:
            raise lifecycle.RetentionError("--undo takes one version")
        undone = lifecycle.unretire(a.registry, a.model_name, a.version[0], a.reason, by=_who())
        print(f"{a.version[0]}: {'no longer retired' if undone else 'was not retired'}")
        return 0
    if a.policy:
        if a.version:
            raise lifecycle.RetentionError("give versions or --policy, not both")
        done = lifecycle.apply_retention(
            a.registry, a.model_name, _retention(a), referenced=referenced, by=_who()
        )
    else:
        if not a.version:
            raise lifecycle.RetentionError("name the versions to retire (or --policy)")
        if not a.reason:
            raise lifecycle.RetentionError("--reason is required")
        done = lifecycle.retire(
            a.registry, a.model_name, a.version, a.reason, by=_who(), referenced=referenced
        )
    if a.json:
        _print_json({"retired": done})
    else:
        print(f"retired {len(done)}: {', '.join(done)}" if done else "nothing newly retired")
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    grace = a.grace_days if a.grace_days is not None else _retention(a).grace_days
    result = lifecycle.gc(
        a.registry,
        a.model_name,
        grace_days=grace,
        referenced=_referenced(a),
        dry_run=a.dry_run,
    )
    if a.json:
        _print_json({**result.to_dict(), "dry_run": a.dry_run})
        return 0
    verb = "would delete" if a.dry_run else "deleted"
    print(f"{verb} {len(result.deleted)}: {', '.join(result.deleted) or '-'}")
    if result.waiting:
        print(f"in their grace period ({grace:g} days): {', '.join(result.waiting)}")
    for version, why in sorted(result.kept.items()):
        print(f"kept {version}: {why}")
    return 0


def _registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", required=True, help="registry root (folder or gs://)")
    p.add_argument("--model-name", default="recpipe-sasrec")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")


def _protect_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        action="store_true",
        help="also protect every version an InferenceService in --namespace serves "
        "(read through the Kubernetes API)",
    )
    p.add_argument("--namespace", default="recpipe")
    p.add_argument("--keep", action="append", metavar="VERSION", help="protect this version")


def add_commands(sub: Any) -> None:
    r = sub.add_parser("registry", help="model versions: list, show, retire, gc (and promote)")
    rs = r.add_subparsers(dest="registry_command", required=True)

    ls = rs.add_parser("list", help="every version with its state, metrics and provenance")
    _registry_flags(ls)
    _protect_flags(ls)
    ls.add_argument("--env", help="the environment this registry belongs to (shown as ENV)")
    ls.set_defaults(func=cmd_list)

    sh = rs.add_parser("show", help="one version's manifest, or its lineage (--lineage)")
    _registry_flags(sh)
    sh.add_argument("version", help="registry version (v-...)")
    sh.add_argument(
        "--lineage",
        action="store_true",
        help="raw data -> validation -> features -> training -> evaluation -> run -> deployments",
    )
    sh.set_defaults(func=cmd_show)

    rt = rs.add_parser("retire", help="mark versions retired (serve and deploy refuse them)")
    _registry_flags(rt)
    _protect_flags(rt)
    rt.add_argument("version", nargs="*", help="registry versions (v-...)")
    rt.add_argument("--reason", help="recorded in the history (required)")
    rt.add_argument(
        "--policy", action="store_true", help="retire what the config's retention policy says"
    )
    rt.add_argument("--undo", action="store_true", help="un-retire one version (before gc)")
    rt.add_argument("--config", help="PipelineConfig YAML/JSON (its retention section)")
    rt.set_defaults(func=cmd_retire)

    g = rs.add_parser("gc", help="delete retired versions past their grace period")
    _registry_flags(g)
    _protect_flags(g)
    g.add_argument("--config", help="PipelineConfig YAML/JSON (retention.grace_days)")
    g.add_argument("--grace-days", type=float, help="overrides retention.grace_days")
    g.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    g.set_defaults(func=cmd_gc)

    # ---- `registry promote` (across environments) is registered HERE, by cli/promote.py's
    # add_promote_parser(subparsers), when that module exists (it is H16-B's).
    if _PROMOTE is not None:
        _PROMOTE.add_promote_parser(rs)


__all__ = ["add_commands"]
