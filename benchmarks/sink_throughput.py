"""Figure: the log sink's sustained intake on these 2 cores (goal: keeps up with 2,000
predictions/s = 4,000 events/s with one replica), and its memory.

The sink runs as its own process (`recpipe monitor sink serve`, the default SinkConfig but
for the folders: a temp output folder and write-ahead log) on 127.0.0.1. A load generator in
this process (asyncio, raw HTTP/1.1 keep-alive, none of the sink's code) keeps
--connections connections busy for --seconds: each sends a prediction's two CloudEvents one
after the other, the request event then the response event, sharing ce-id, made by the
server's own `cloud_events` (what `recpipe serve --log-to` sends, held against KServe's
logger by tests/serving/test_logging.py) for our v1 requests: one instance, a 20-item
history, k=10, a caller user_id; the answer rendered as the server renders it (orjson,
10 items, scores, model name and version).

Two modes, each --repeats times with a fresh sink:
  capacity  closed loop: as fast as the sink answers (its ceiling);
  paced     open loop at --rate predictions/s (default 2,000) spread over the connections,
            each prediction due at start + i / rate: does the sink keep up, and how long
            does a prediction's pair wait for its two acknowledgements (from its due time).

A prediction counts when both its events were acknowledged (200) AND its row is in the
Parquet files after the sink's SIGTERM shutdown (which writes every waiting row); rows
are counted from the files themselves. Also: 503s (back-pressure), other errors, the sink's
CPU (from /proc) and peak RSS (the kernel's ru_maxrss of the exited process, from wait4),
and the generator's own CPU (this process) so that its share of the 2 cores is visible.

    .venv/bin/python benchmarks/sink_throughput.py [--seconds 10] [--repeats 3]
        [--connections 8] [--rate 2000] [--mode both|capacity|paced]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import requests
import uvloop
import yaml
from _env import environment
from serving_http import cpu_seconds, load
from serving_loadgen import Connection

from recpipe.serving.contract import Recommendation, v1_response
from recpipe.serving.local_server import free_port
from recpipe.serving.server import Exchange, LogIdentity, cloud_events

GOAL_PREDICTIONS_PER_S = 2_000.0
KEY_ENV = "RECPIPE_MONITOR_HMAC_KEY"
KEY = "sink-benchmark-key-0123456789"  # a benchmark's throwaway key
ID_WIDTH = 16  # every event id has this many characters, so templates keep their length
PLACEHOLDER = b"#" * ID_WIDTH
VARIANTS = 64  # distinct request/answer bodies (histories, callers, answers)
NUM_ITEMS = 12_101  # the Beauty vocabulary's size: ids of realistic length
HISTORY, K = 20, 10
SINK_COMMAND = (sys.executable, "-m", "recpipe.cli", "monitor", "sink", "serve")
MODEL_VERSION = "v-cc1cded50d318088"  # a registry version's shape


@dataclass
class Tally:
    """What the generator saw in one run."""

    acked: set[str] = field(default_factory=set)  # ids whose both events got a 200
    latencies: list[float] = field(default_factory=list)  # per acked pair, ms
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection failures and timeouts
    sent: int = 0


def templates(host: str, port: int) -> list[tuple[bytes, bytes]]:
    """Per variant, the two raw HTTP messages (request event, response event) with the
    event id as PLACEHOLDER: the exact bytes `--log-to` sends, bar the id."""
    rng = random.Random(0)
    identity = LogIdentity("recommender", namespace="shop", source="recs-predictor-00001-abc")
    out = []
    for v in range(VARIANTS):
        history = [str(rng.randrange(1, NUM_ITEMS)) for _ in range(HISTORY)]
        request = orjson.dumps(
            {"instances": [{"history": history, "k": K, "user_id": f"customer-{v:08d}"}]}
        )
        items = [str(rng.randrange(1, NUM_ITEMS)) for _ in range(K)]
        scores = sorted((round(rng.uniform(-2, 12), 6) for _ in range(K)), reverse=True)
        answer = orjson.dumps(
            v1_response([Recommendation(items, scores, 0)], "recommender", MODEL_VERSION)
        )
        now = datetime.now(UTC)
        exchange = Exchange(PLACEHOLDER.decode(), "application/json", request, now, {}, answer, now)
        pair = []
        for headers, body in cloud_events(exchange, identity, now):
            head = f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            head += f"Content-Length: {len(body)}\r\n\r\n"
            message = head.encode("latin-1") + body
            assert message.count(PLACEHOLDER) == 1, "the id appears once, in ce-id"
            pair.append(message)
        out.append((pair[0], pair[1]))
    return out


async def drive(
    host: str,
    port: int,
    messages: list[tuple[bytes, bytes]],
    *,
    connections: int,
    seconds: float,
    rate: float | None,
    prefix: str,
) -> tuple[Tally, float]:
    """Keep `connections` connections busy for `seconds` (closed loop), or send pairs due
    at `rate` per second over them (open loop); returns the tally and the elapsed time."""
    tally = Tally()
    counter = 0
    start = time.perf_counter() + 0.05
    deadline = start + seconds

    async def post(conn: Connection, message: bytes) -> int:
        status = await conn.request(message, b"")
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if conn.closing:
            raise ConnectionResetError("the sink asked to close")
        return status

    async def worker() -> None:
        nonlocal counter
        conn: Connection | None = None
        while True:
            i = counter
            counter += 1
            due = start + i / rate if rate else time.perf_counter()
            if due >= deadline or time.perf_counter() >= deadline:
                break
            if rate and (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            eid = f"{prefix}{i:0{ID_WIDTH - len(prefix)}d}"
            request, response = messages[i % len(messages)]
            tally.sent += 1
            try:
                if conn is None:
                    conn = Connection(*await asyncio.open_connection(host, port))
                first = await asyncio.wait_for(
                    post(conn, request.replace(PLACEHOLDER, eid.encode())), 10
                )
                second = await asyncio.wait_for(
                    post(conn, response.replace(PLACEHOLDER, eid.encode())), 10
                )
            except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                tally.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if first == 200 and second == 200:
                tally.acked.add(eid)
                tally.latencies.append((time.perf_counter() - due) * 1000)
        if conn is not None:
            conn.close()

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally, time.perf_counter() - start


class Sink:
    """`recpipe monitor sink serve` as its own process, in a temp folder."""

    def __init__(self, folder: Path, pythonpath: str | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.output = folder / "served"
        config = folder / "sink.yaml"
        config.write_text(
            yaml.safe_dump({"output_uri": str(self.output), "wal_dir": str(folder / "wal")})
        )
        self.log = (folder / "sink.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *SINK_COMMAND,
                *("--config", str(config), "--port", str(self.port)),
            ],
            env={**os.environ, KEY_ENV: KEY, **({"PYTHONPATH": pythonpath} if pythonpath else {})},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 180  # a loaded machine imports slowly
        while True:
            try:
                if requests.get(f"{self.url}healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sink did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def rss_mib(self) -> float:
        """The sink's resident memory now (VmRSS), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log_tail(self) -> str:
        return (self.folder / "sink.log").read_text(errors="replace")[-2000:]

    def metrics(self) -> dict[str, float]:
        text = requests.get(f"{self.url}metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line.startswith("recpipe_sink_") and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM (the sink writes every waiting row), then reap it: exit status and peak
        RSS in MiB (ru_maxrss, KiB on Linux)."""
        if self.proc.poll() is not None:
            self.log.close()
            return self.proc.returncode, float("nan")
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.05)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.log.close()
        return self.proc.returncode, usage.ru_maxrss / 1024


def written_ids(output: Path) -> tuple[int, set[str]]:
    """Rows in the Parquet files (all of them) and their distinct event ids."""
    rows, ids = 0, set()
    for path in output.rglob("*.parquet"):
        table = pq.read_table(path, columns=["event_id"])
        rows += table.num_rows
        ids.update(table.column("event_id").to_pylist())
    return rows, ids


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def one_run(
    a: argparse.Namespace, rate: float | None, pythonpath: str | None = None
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="recpipe-sink-bench-"))
    try:
        sink = Sink(folder, pythonpath)
        try:
            messages = templates("127.0.0.1", sink.port)
            start_rss = sink.rss_mib()  # imports and an empty service: before any event
            # warm-up: uvicorn, the parsers and the first Parquet imports, not measured
            uvloop.run(
                drive(
                    *("127.0.0.1", sink.port, messages),
                    connections=2,
                    seconds=1.0,
                    rate=None,
                    prefix="warm",
                )
            )
            before_load = load()
            cpu0, gen0 = cpu_seconds(sink.proc.pid), time.process_time()
            tally, elapsed = uvloop.run(
                drive(
                    "127.0.0.1",
                    sink.port,
                    messages,
                    connections=a.connections,
                    seconds=a.seconds,
                    rate=rate,
                    prefix="run",
                )
            )
            sink_cpu = cpu_seconds(sink.proc.pid) - cpu0
            gen_cpu = time.process_time() - gen0
            metrics = sink.metrics()
        finally:
            code, peak_mib = sink.stop()
        if code != 0:
            raise RuntimeError(f"the sink exited {code}:\n{sink.log_tail()}")
        rows, ids = written_ids(sink.output)
        done = len(tally.acked & ids)
        return {
            "mode": "paced" if rate else "capacity",
            "offered_per_s": rate,  # None: closed loop
            "seconds": elapsed,
            "predictions_per_s": done / elapsed,
            "events_per_s": 2 * done / elapsed,
            "acked_pairs": len(tally.acked),
            "written_pairs": done,
            "acked_not_written": len(tally.acked - ids),
            "rows_in_files": rows,
            "http_503": tally.statuses.get(503, 0),
            "http_other": sum(n for s, n in tally.statuses.items() if s not in (200, 503)),
            "errors": tally.errors,
            "pair_p50_ms": pct(tally.latencies, 50),
            "pair_p99_ms": pct(tally.latencies, 99),
            "sink_cpu_ms_per_prediction": sink_cpu * 1000 / max(done, 1),
            "sink_cores": sink_cpu / elapsed,
            "generator_cores": gen_cpu / elapsed,
            "sink_start_rss_mib": start_rss,
            "sink_peak_rss_mib": peak_mib,
            "sink_write_failures": metrics.get("recpipe_sink_write_failures_total", 0.0),
            "load": before_load,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 1) if abs(v) >= 100 else round(v, 3)
    return v


def show(r: dict[str, Any]) -> str:
    return " ".join(f"{k}={rounded(v)}" for k, v in r.items())


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med: dict[str, Any] = {"mode": runs[0]["mode"]}
    for k, v in runs[0].items():
        if isinstance(v, int | float) and k != "mode":
            med[k] = statistics.median(r[k] for r in runs)
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="per run (<= 120)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connections", type=int, default=8, help="kept busy (1-256)")
    p.add_argument("--rate", type=float, default=GOAL_PREDICTIONS_PER_S, help="paced mode, /s")
    p.add_argument("--mode", choices=["both", "capacity", "paced"], default="both")
    p.add_argument(
        "--baseline",
        help="PYTHONPATH of another recpipe tree (e.g. an earlier commit's, laid out as the "
        "package): each repeat also runs that sink, alternating, and the ratio is printed",
    )
    a = p.parse_args()
    if not (0 < a.seconds <= 120 and 1 <= a.repeats <= 20 and 1 <= a.connections <= 256):
        raise SystemExit("--seconds in (0, 120], --repeats in [1, 20], --connections in [1, 256]")
    if not 0 < a.rate <= 50_000:
        raise SystemExit("--rate must be in (0, 50000]")
    print(environment())
    modes = {"capacity": [None], "paced": [a.rate], "both": [None, a.rate]}[a.mode]
    results: dict[str, Any] = {"connections": a.connections}
    for rate in modes:
        runs, base = [], []
        for i in range(a.repeats):
            if a.baseline:  # alternating, so both see the same neighbours' load
                b = one_run(a, rate, a.baseline)
                print(f"baseline run {i + 1}: {show(b)}", flush=True)
                base.append(b)
            r = one_run(a, rate)
            print(f"run {i + 1}: {show(r)}", flush=True)
            runs.append(r)
        med = summary(runs)
        if base:
            bmed = summary(base)
            print(f"baseline median {bmed['mode']}: {show(bmed)}", flush=True)
            for key in ("predictions_per_s", "sink_cpu_ms_per_prediction", "sink_peak_rss_mib"):
                med[f"{key}_vs_baseline"] = med[key] / bmed[key] if bmed[key] else float("nan")
            med["baseline_predictions_per_s"] = bmed["predictions_per_s"]
            med["baseline_cpu_ms_per_prediction"] = bmed["sink_cpu_ms_per_prediction"]
            med["baseline_peak_rss_mib"] = bmed["sink_peak_rss_mib"]
        verdict = (
            med["predictions_per_s"] >= GOAL_PREDICTIONS_PER_S
            if rate is None
            else med["predictions_per_s"] >= 0.99 * rate and med["http_503"] == 0
        )
        med["keeps_up"] = verdict
        print(f"median {med['mode']}: {show(med)}", flush=True)
        results[med["mode"]] = med
    print(f"load average now: {os.getloadavg()}")
    results = {
        k: {m: rounded(v) for m, v in r.items()} if isinstance(r, dict) else r
        for k, r in results.items()
    }
    print("RESULT sink_throughput " + json.dumps(results))


if __name__ == "__main__":
    main()
