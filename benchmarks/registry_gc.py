"""`recpipe registry gc` over a registry of 1,000 versions on the GCS emulator: wall time
and HTTP requests of one gc that deletes the retired ones past their grace period, of a
rerun with nothing to do, and of `registry list` (which reads every manifest).

Each repeat builds a fresh model folder of VERSIONS versions (a manifest and FILES files
each, written straight to the bucket), production and its rollback target among them, and
RETIRED of the others retired 30 days ago. Prints the median of REPEATS.

    .venv/bin/python benchmarks/registry_gc.py [--versions 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import requests

from benchmarks._env import environment
from recpipe.core import storage
from recpipe.registry import lifecycle
from recpipe.registry import store as registry

FILES = 2
COUNT: Counter[str] = Counter()
_real_request = requests.Session.request


def _counting(self: requests.Session, method: str, url: str, *a: Any, **kw: Any) -> Any:
    COUNT[method] += 1
    return _real_request(self, method, url, *a, **kw)


def build(root: str, model: str, versions: int, retired: int) -> list[str]:
    """Write `versions` published versions (manifest last), the pointer with production,
    its rollback target and `retired` retired 30 days ago."""
    made = []
    for i in range(versions):
        data = {f"part-{j}.bin": f"{model} {i} {j}".encode() for j in range(FILES)}
        files = {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}
        version = registry.version_of(files)
        base = f"{root}/{model}/{version}"
        for name, body in data.items():
            storage.write_bytes(f"{base}/{name}", body)
        at = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat()
        manifest = {"model_name": model, "version": version, "pushed_at": at, "files": files}
        storage.write_bytes(f"{base}/manifest.json", json.dumps(manifest).encode())
        made.append(version)
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    prod, previous = made[-1], made[-2]
    pointer = {
        "version": prod,
        "since": old,
        "history": [
            {"action": "set_production", "version": previous, "previous": None, "at": old},
            {"action": "promote", "version": prod, "previous": previous, "at": old},
        ],
        "retired": {v: {"at": old, "reason": "bench", "by": "bench"} for v in made[:retired]},
    }
    storage.write_bytes(f"{root}/{model}/production.json", json.dumps(pointer).encode())
    return made


def timed(fn: Any) -> tuple[float, int, Any]:
    COUNT.clear()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, sum(COUNT.values()), out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--versions", type=int, default=1000)
    p.add_argument("--retired", type=int, default=900)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from gcp_storage_emulator.server import create_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = create_server("127.0.0.1", port, in_memory=True)
    threading.Thread(target=server.start, daemon=True).start()
    time.sleep(0.5)
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    storage.gcs_client.cache_clear()
    storage.gcs_client().create_bucket("bench")
    requests.Session.request = _counting  # type: ignore[method-assign]
    rows: dict[str, list[tuple[float, int]]] = {"gc": [], "gc rerun": [], "list": []}
    for r in range(a.repeats):
        model = f"m{r}"
        t0 = time.perf_counter()
        made = build("gs://bench/reg", model, a.versions, a.retired)
        built = time.perf_counter() - t0
        s, n, _ = timed(lambda m=model: lifecycle.list_versions("gs://bench/reg", m))
        rows["list"].append((s, n))
        s, n, result = timed(lambda m=model: lifecycle.gc("gs://bench/reg", m, grace_days=7))
        assert sorted(result.deleted) == sorted(made[: a.retired]), "gc deleted the wrong set"
        rows["gc"].append((s, n))
        s, n, again = timed(lambda m=model: lifecycle.gc("gs://bench/reg", m, grace_days=7))
        assert again.deleted == []
        rows["gc rerun"].append((s, n))
        left = lifecycle.version_folders("gs://bench/reg", model)
        assert len(left) == a.versions - a.retired and made[-1] in left and made[-2] in left
        print(
            f"repeat {r}: built {a.versions} versions in {built:.1f} s; "
            + "; ".join(f"{k} {v[-1][0]:.2f} s, {v[-1][1]} requests" for k, v in rows.items())
            + f"; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    for name, got in rows.items():
        secs = statistics.median(s for s, _ in got)
        reqs = statistics.median(n for _, n in got)
        print(
            f"result: {name} over {a.versions} versions ({a.retired} retired past grace, "
            f"{FILES + 1} objects each): median {secs:.2f} s, {reqs:.0f} HTTP requests "
            f"(runs: {', '.join(f'{s:.2f}' for s, _ in got)})"
        )
    print(environment())
    print(f"load average: {os.getloadavg()}")
    server.stop()


if __name__ == "__main__":
    main()
