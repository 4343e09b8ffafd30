"""A version's lineage, from raw data to the InferenceService, read from what the registry
already keeps: the manifest (raw partitions with their sha256 or GCS generation, the
validation report, features, training config, code version and image, evaluation, run)
and the pointer's append-only history (every deployment and traffic decision since)."""

from __future__ import annotations

from typing import Any

from recpipe.core.config import clip
from recpipe.registry import store

# The keys of a manifest's `lineage` object (push_blessed's `lineage` argument).
LINEAGE_KEYS = (
    "validation_report",
    "validation_stats",
    "events",
    "features",
    "training_config",
    "model",
    "evaluation",
    "run_id",
    "run_name",
    "run_uuid",
)
MAX_LINEAGE_VALUE = 64 << 10  # a training config is ~1-2 KB of JSON


def check_lineage(lineage: dict[str, Any] | None) -> dict[str, str]:
    """Known keys only, each a bounded string: what a manifest may carry as its lineage."""
    out: dict[str, str] = {}
    for key, value in (lineage or {}).items():
        if key not in LINEAGE_KEYS:
            raise store.RegistryError(f"unknown lineage key {clip(repr(key), 80)}")
        if not isinstance(value, str):
            raise store.RegistryError(f"lineage {key}: expected a string")
        if len(value) > MAX_LINEAGE_VALUE:
            raise store.RegistryError(f"lineage {key}: over {MAX_LINEAGE_VALUE} characters")
        if value:
            out[key] = value
    return out


def version_events(pointer: dict[str, Any] | None, version: str) -> list[dict[str, Any]]:
    """Every history event about `version`, and every production change away from it."""
    found = []
    for e in store.history_events(pointer):
        if e.get("version") == version or (
            e.get("previous") == version and e.get("action", "set_production") in store.PRODUCTION_MOVES
        ):
            found.append(e)
    return found


def chain(manifest: dict[str, Any], pointer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The steps from raw data to serving, in order; each names what it links to."""
    lineage = manifest.get("lineage") or {}
    blessing = manifest.get("blessing") or {}
    version = manifest.get("version", "")
    steps: list[dict[str, Any]] = [
        {"step": "raw data", "partitions": manifest.get("data_fingerprint") or {}},
        {
            "step": "validation",
            "report": lineage.get("validation_report", ""),
            "stats": lineage.get("validation_stats", ""),
            "events": lineage.get("events", ""),
        },
        {"step": "features", "uri": lineage.get("features", "")},
        {
            "step": "training",
            "config": lineage.get("training_config", ""),
            "code_version": manifest.get("code_version", ""),
            "image": manifest.get("image", ""),
            "model": lineage.get("model", ""),
        },
        {
            "step": "evaluation",
            "uri": lineage.get("evaluation", ""),
            "metrics": manifest.get("metrics") or {},
            "baseline_metrics": manifest.get("baseline_metrics") or {},
            "blessed": blessing.get("blessed"),
            "reason": blessing.get("reason", ""),
        },
        {
            "step": "run",
            "run_id": manifest.get("pipeline_run_id", "") or lineage.get("run_id", ""),
            "run_uuid": lineage.get("run_uuid", ""),
        },
        {
            "step": "registry",
            "version": version,
            "pushed_at": manifest.get("pushed_at", ""),
            "files": len(manifest.get("files") or {}),
        },
    ]
    for event in version_events(pointer, version):
        steps.append({"step": "decision", **event})
    return steps


def version_lineage(root: str, model_name: str, version: str) -> dict[str, Any]:
    """The manifest and its lineage chain (raises RegistryError for a version without a
    readable manifest)."""
    uri = store.version_uri(root, model_name, version)
    manifest = store.read_manifest(uri)
    pointer = store.production(root, model_name)
    return {"uri": uri, "manifest": manifest, "lineage": chain(manifest, pointer)}
