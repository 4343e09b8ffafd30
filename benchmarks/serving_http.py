"""Figures: the KServe predictor over loopback HTTP, driven by load generators that are not
the server's code, on the Beauty-sized model (benchmarks/serving_model.py).

1. fixed rate: single-instance v1 requests at 200 req/s from the open-loop generator
   (benchmarks/serving_loadgen.py, its own process): p50/p99 from each request's due time.
2. throughput: the most batch-1 requests/s that `wrk` (C, keep-alive, closed loop) gets
   with no errors over a sweep of connection counts, as a ratio of the in-process limit
   (batch-1 forward + top-k in a loop, benchmarks/serving_inprocess.py). Also as CPU:
   the server process's CPU ms per request (from /proc) against the loop's CPU ms per
   call, the ratio a core of its own would give, which sharing the 2 cores cannot skew.
3. batch: the same with 32 instances per request, in instances/s.

Every figure is the median of --repeats runs (each run also records the 1-minute load
average: the 2 cores are shared); the server is a real `kserve.ModelServer`
process on 127.0.0.1 with the default ServingConfig (1 torch thread, 1 worker; concurrent
requests share forward passes up to --micro-batch instances, 1 turns that off). Every load
run is bounded in time (--seconds) and the generator refuses non-loopback targets.

    .venv/bin/python benchmarks/serving_http.py [--figure all|fixed-rate|throughput|batch]
        [--seconds 10] [--repeats 3] [--rate 200] [--micro-batch 32] [--connections 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _env import print_result
from serving_inprocess import InProcess
from serving_model import add_model_arguments, build, load_histories

from recpipe.serving.config import ServingConfig
from recpipe.serving.local_server import LocalServer

HERE = Path(__file__).resolve().parent
NAME = "recommender"
K = 10

WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("RECPIPE_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def write_bodies(histories: list[list[str]], batch: int, path: Path) -> Path:
    lines = []
    for start in range(0, len(histories) - batch + 1, batch):
        instances = [{"history": h, "k": K} for h in histories[start : start + batch]]
        lines.append(json.dumps({"instances": instances}))
    path.write_text("\n".join(lines) + "\n")
    return path


def loadgen(url: str, bodies: Path, rate: float, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "serving_loadgen.py"),
            "--url",
            url,
            "--bodies",
            str(bodies),
            "--rate",
            str(rate),
            "--duration",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def wrk(url: str, bodies: Path, connections: int, seconds: float, script: Path) -> dict[str, float]:
    """One closed-loop wrk run: requests/s, errors, latency percentiles (ms)."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        env={"RECPIPE_BODIES": str(bodies), "PATH": "/usr/bin:/bin"},
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(x) for x in sock.groups()) if sock else 0
    pct = {}
    for p, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[f"p{p}_ms"] = float(value) * UNITS[unit]
    return {"rps": rps, "requests": total, "errors": errors, "connections": connections, **pct}


def sweep(
    url: str, bodies: Path, seconds: float, script: Path, connections: tuple[int, ...]
) -> dict[str, float]:
    """The best error-free wrk run over connection counts (its count is used afterwards)."""
    runs = [wrk(url, bodies, c, seconds, script) for c in connections]
    clean = [r for r in runs if r["errors"] == 0] or runs
    return max(clean, key=lambda r: r["rps"])


def cpu_seconds(server: LocalServer | int) -> float:
    """User + system CPU the server process has used (it is one process, 1 worker)."""
    if isinstance(server, LocalServer):
        assert server.proc is not None
        server = server.proc.pid
    fields = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> float:
    """1-minute load average: the 2 cores are shared with other work, so every run says."""
    return os.getloadavg()[0]


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--figure", choices=["all", "fixed-rate", "throughput", "batch"], default="all")
    p.add_argument("--seconds", type=float, default=10.0, help="per load run (<= 60)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--inprocess-seconds", type=float, default=3.0)
    p.add_argument(
        "--micro-batch",
        type=int,
        default=ServingConfig().micro_batch,
        help="the server's --micro-batch (1 = every request its own forward)",
    )
    p.add_argument(
        "--connections",
        default="1,2,4,8,16,32",
        help="wrk connection counts the batch-1 throughput sweep tries",
    )
    a = p.parse_args()
    if not 0 < a.seconds <= 60 or not 1 <= a.repeats <= 20:
        raise SystemExit("--seconds must be in (0, 60] and --repeats in [1, 20]")
    figures = {"fixed-rate", "throughput", "batch"} if a.figure == "all" else {a.figure}
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    output = Path(a.output)
    uri = build(Path(a.data), output)
    histories = load_histories(output)
    tmp = Path(tempfile.mkdtemp(prefix="recpipe-serving-http-"))
    b1 = write_bodies(histories, 1, tmp / "b1.jsonl")
    b32 = write_bodies(histories, 32, tmp / "b32.jsonl")
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    results: dict[str, Any] = {
        "server_torch_threads": ServingConfig().torch_threads,
        "micro_batch": a.micro_batch,
    }
    torch.set_num_threads(ServingConfig().torch_threads)  # the in-process side, as the server
    limit = InProcess(uri, histories) if figures & {"throughput", "batch"} else None
    ips = a.inprocess_seconds

    server_args = ["--micro-batch", str(a.micro_batch)]
    with LocalServer(uri, name=NAME, extra_args=server_args) as server:
        url = f"{server.url}/v1/models/{NAME}:predict"
        wrk(url, b1, 2, 2, script)  # warm
        if "fixed-rate" in figures:
            runs = []
            for _ in range(a.repeats):
                before = load()
                r = loadgen(url, b1, a.rate, a.seconds)
                runs.append(
                    {
                        **{
                            k: r[k]
                            for k in (
                                "achieved_rps",
                                "p50_ms",
                                "p99_ms",
                                "max_ms",
                                "p99_sent_ms",
                                "errors",
                            )
                        },
                        "load": before,
                    }
                )
            results["fixed_rate"] = {"rate": a.rate, "median": median_of(runs), "runs": runs}
        if "throughput" in figures and limit:
            # Pick the connection count once, then pair each HTTP run with an in-process run
            # right before it: the ratio of each pair cancels slow drifts in background load.
            counts = tuple(int(c) for c in a.connections.split(","))
            best = sweep(url, b1, min(a.seconds, 5), script, counts)
            runs = []
            for _ in range(a.repeats):
                before = load()
                inproc = limit.forward_topk(ips)
                cpu0 = cpu_seconds(server)
                r = wrk(url, b1, int(best["connections"]), a.seconds, script)
                cpu_ms = (cpu_seconds(server) - cpu0) * 1000 / r["requests"]
                runs.append(
                    {
                        **r,
                        "inprocess_per_s": inproc.per_s,
                        "ratio": r["rps"] / inproc.per_s,
                        "server_cpu_ms": cpu_ms,
                        "inprocess_cpu_ms": inproc.cpu_ms,
                        "cpu_ratio": inproc.cpu_ms / cpu_ms,
                        "load": before,
                    }
                )
            results["throughput_b1"] = {"median": median_of(runs), "runs": runs}
        if "batch" in figures and limit:
            best = sweep(url, b32, min(a.seconds, 5), script, (1, 2, 4))
            runs = []
            for _ in range(a.repeats):
                before = load()
                inproc = limit.forward_topk(ips, 32)
                b1_http = wrk(url, b1, 4, min(a.seconds, 5), script)["rps"]
                cpu0 = cpu_seconds(server)
                r = wrk(url, b32, int(best["connections"]), a.seconds, script)
                cpu_ms = (cpu_seconds(server) - cpu0) * 1000 / (r["requests"] * 32)
                runs.append(
                    {
                        **r,
                        "instances_per_s": r["rps"] * 32,
                        "inprocess_instances_per_s": inproc.per_s,
                        "ratio": r["rps"] * 32 / inproc.per_s,
                        "server_cpu_ms_per_instance": cpu_ms,
                        "inprocess_cpu_ms_per_instance": inproc.cpu_ms,
                        "gain_over_b1_http": r["rps"] * 32 / b1_http,
                        "load": before,
                    }
                )
            results["throughput_b32"] = {"median": median_of(runs), "runs": runs}
    shutil.rmtree(tmp, ignore_errors=True)
    print_result("serving_http", results, default=lambda x: round(x, 3))


if __name__ == "__main__":
    main()
