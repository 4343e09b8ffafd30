"""Figure: what KServe's HTTP stack alone costs per request on these cores.

A constant `kserve.Model` (answers a fixed 10-item prediction, no model work) in a real
`kserve.ModelServer` process on 127.0.0.1, loaded by `wrk` with the same single-instance v1
bodies as benchmarks/serving_http.py: requests/s and the server's CPU ms per request. The
difference to our predictor's CPU per request is what our model and code add; 1 / this
floor is the most any model could serve per core through KServe's Python server.

Two servers, measured alternately: KServe's stock REST server ("kserve_default", which
always adds a timing middleware writing two trace log lines per request), and the REST
server our predictor runs (`recpipe.serving.server.ServingRESTServer`, "as_served",
which leaves that middleware out unless requests are logged).

    .venv/bin/python benchmarks/serving_kserve_floor.py [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _env import print_result
from serving_http import WRK_SCRIPT, cpu_seconds, load, write_bodies, wrk
from serving_model import add_model_arguments, build, load_histories

from recpipe.serving.local_server import free_port

VARIANTS = ("kserve_default", "as_served")

CONSTANT_SERVER = """
import sys
sys.argv = sys.argv[:1]  # kserve parses argv on import
import logging
from recpipe.serving.kserve_lib import kserve

class Constant(kserve.Model):
    def __init__(self):
        super().__init__("recommender")
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        return {"predictions": [{"items": ["1"] * 10, "scores": [0.5] * 10, "unknown_history": 0}]}

if AS_SERVED:
    from recpipe.serving.server import ServingRESTServer as Loopback
else:
    class Loopback(kserve.model_server.RESTServer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.config.host = "127.0.0.1"

kserve.model_server.RESTServer = Loopback
server = kserve.ModelServer(http_port=PORT, enable_grpc=False, workers=1, enable_latency_logging=False)
logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
server.start([Constant()])
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_model_arguments(p)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    build(Path(a.data), Path(a.output))
    tmp = Path(tempfile.mkdtemp(prefix="recpipe-kserve-floor-"))
    bodies = write_bodies(load_histories(Path(a.output)), 1, tmp / "b1.jsonl")
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    servers = {}
    try:
        for variant in VARIANTS:
            port = free_port()
            code = CONSTANT_SERVER.replace("PORT", str(port)).replace(
                "AS_SERVED", str(variant == "as_served")
            )
            proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
            servers[variant] = (proc, f"http://127.0.0.1:{port}/v1/models/recommender:predict")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/v2/health/ready", timeout=1
                    ):
                        break
                except OSError:
                    time.sleep(0.2)
            wrk(servers[variant][1], bodies, 2, 2, script)  # warm
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for _ in range(a.repeats):
            for variant, (proc, url) in servers.items():  # alternate: same background load
                before = load()
                cpu0 = cpu_seconds(proc.pid)
                r = wrk(url, bodies, 2, a.seconds, script)
                cpu_ms = (cpu_seconds(proc.pid) - cpu0) * 1000 / r["requests"]
                runs[variant].append(
                    {
                        "rps": r["rps"],
                        "server_cpu_ms": cpu_ms,
                        "p99_ms": r["p99_ms"],
                        "load": before,
                    }
                )
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        v: {
            "median": {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]},
            "runs": rs,
        }
        for v, rs in runs.items()
    }
    print_result("serving_kserve_floor", result, default=lambda x: round(x, 3))


if __name__ == "__main__":
    main()
