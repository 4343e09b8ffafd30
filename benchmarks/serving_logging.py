"""Figure: what logging every prediction (`recpipe serve --log-to URL`) adds to a prediction's
latency (goal: p99 + 0.5 ms at most), side by side in one run.

Three real model servers (`kserve.ModelServer` processes, benchmarks/serving_model.py's
Beauty-sized model, the default ServingConfig) run at once on 127.0.0.1:
  plain   no logging;
  logged  --log-to a real log sink (`recpipe monitor sink serve`, its own process, writing
          Parquet to a temp folder): the server hands each exchange to its sender process
          (serving/log_sender.py) after the answer has gone out, which posts the two
          CloudEvents;
  dead    --log-to a port nobody listens on (every event dropped and counted);
  instant --log-to a stand-in that answers every event 200 at once and does nothing else
          (its own process, raw asyncio): the sender's own cost in the server, without the
          real sink's CPU competing for the same 2 cores (not a sink: nothing is kept).
This process sends sequential v1 requests over one keep-alive connection per server
(http.client: one instance, a real 20-item Beauty history, k=10, a caller user_id), in
--rounds rounds; in each round every server gets --warmup untimed then --requests timed
requests (with --baseline PYTHONPATH a fifth server, logged_before, from that tree logs to
the same sink: an earlier sender side by side), the servers' order rotating from round to round so that drifts in the shared
machine's load fall on all three alike. Per round: p50/p99 of each and the added p50/p99
(each - plain); the figure is the median over rounds. Also each server's CPU
per request (from /proc: the logging's cost inside the server's process) and its sender
process's, the sink's CPU,
what the sink acknowledged and wrote, and what was dropped.

    .venv/bin/python benchmarks/serving_logging.py [--rounds 5] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import requests
from _env import environment
from serving_http import cpu_seconds, load
from serving_model import add_model_arguments, build, load_histories
from sink_throughput import Sink, pct, rounded, written_ids

from recpipe.serving.local_server import LocalServer, free_port

NAME = "recommender"
HISTORY, K = 20, 10
GOAL_ADDED_P99_MS = 0.5
INSTANT_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CONFIGS = ("plain", "logged", "dead", "instant")
BEFORE = "logged_before"  # --baseline: the same real sink, from another tree's server


def bodies(histories: list[list[str]], n: int = 200) -> list[bytes]:
    """v1 requests of one instance: the last 20 items of real histories that have 20."""
    long = [h[-HISTORY:] for h in histories if len(h) >= HISTORY][:n]
    if not long:
        raise SystemExit(f"no history of {HISTORY} items in the benchmark's histories")
    return [
        orjson.dumps({"instances": [{"history": h, "k": K, "user_id": f"customer-{i:08d}"}]})
        for i, h in enumerate(long)
    ]


class Client:
    """One keep-alive connection to a server; times each request from send to last byte."""

    def __init__(self, server: LocalServer) -> None:
        self.port = server.port
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.path = f"/v1/models/{NAME}:predict"
        self.headers = {"Content-Type": "application/json"}

    def _post(self, body: bytes) -> http.client.HTTPResponse:
        """One request; a connection the server closed while idle (uvicorn's keep-alive
        timeout, when a loaded machine makes the other servers' turns long) is reopened."""
        try:
            self.conn.request("POST", self.path, body, self.headers)
            return self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request("POST", self.path, body, self.headers)
            return self.conn.getresponse()

    def run(self, messages: list[bytes], n: int, offset: int) -> list[float]:
        times = []
        for i in range(n):
            body = messages[(offset + i) % len(messages)]
            t0 = time.perf_counter()
            r = self._post(body)
            data = r.read()
            times.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
        return times

    def close(self) -> None:
        self.conn.close()


def children_cpu(server: LocalServer) -> float:
    """CPU of the server's child processes (the log sender), seconds; 0 without any."""
    assert server.proc is not None
    pid = server.proc.pid
    path = Path(f"/proc/{pid}/task/{pid}/children")
    kids = path.read_text().split() if path.exists() else []
    total = 0.0
    for kid in kids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(int(kid))
    return total


def server_metrics(server: LocalServer) -> dict[str, float]:
    """The inference log's counters at the server's /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("recpipe_inference_log_") and "_total" in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _answer_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readline():  # a request line: then headers, then the body
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(INSTANT_ANSWER)
    except (OSError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _instant_sink(port: int) -> None:
    server = await asyncio.start_server(_answer_at_once, "127.0.0.1", port)
    await server.serve_forever()


class InstantSink:
    """This script as its own process, answering every POST 200 at once (`--instant-sink`)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--instant-sink", str(self.port)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the instant sink did not start") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def tree(doc: Any) -> Any:
    """`doc` with every float rounded, for the RESULT line."""
    if isinstance(doc, dict):
        return {k: tree(v) for k, v in doc.items()}
    return rounded(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=2000, help="timed, per server and round")
    p.add_argument("--warmup", type=int, default=200, help="untimed, per server and round")
    p.add_argument("--instant-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument(
        "--baseline",
        help="PYTHONPATH of another recpipe tree: a fifth server from it logs to the same "
        "real sink (logged_before), for a side-by-side ratio with an earlier sender",
    )
    a = p.parse_args()
    if a.instant_sink:  # this script as the stand-in sink's process
        asyncio.run(_instant_sink(a.instant_sink))
        return
    if not (1 <= a.rounds <= 50 and 100 <= a.requests <= 100_000 and 0 <= a.warmup <= 10_000):
        raise SystemExit("--rounds in [1, 50], --requests in [100, 100000], --warmup <= 10000")
    print(environment())
    print(f"load average at start: {os.getloadavg()}")
    uri = build(Path(a.data), Path(a.output))
    messages = bodies(load_histories(Path(a.output)))
    folder = Path(tempfile.mkdtemp(prefix="recpipe-serving-logging-"))
    sink = Sink(folder)
    instant = InstantSink()
    dead_url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    servers = {
        "plain": LocalServer(uri, name=NAME),
        "logged": LocalServer(uri, name=NAME, extra_args=["--log-to", sink.url]),
        "dead": LocalServer(uri, name=NAME, extra_args=["--log-to", dead_url]),
        "instant": LocalServer(uri, name=NAME, extra_args=["--log-to", instant.url]),
    }
    configs = CONFIGS
    if a.baseline:
        servers[BEFORE] = LocalServer(
            uri, name=NAME, extra_args=["--log-to", sink.url], env={"PYTHONPATH": a.baseline}
        )
        configs = (*CONFIGS, BEFORE)
    sent = dict.fromkeys(configs, 0)
    cpu = dict.fromkeys(configs, 0.0)
    sender_cpu = dict.fromkeys(configs, 0.0)
    rounds: list[dict[str, Any]] = []
    try:
        for s in servers.values():
            s.start()
        clients = {c: Client(s) for c, s in servers.items()}
        sink_cpu0 = cpu_seconds(sink.proc.pid)
        for r in range(a.rounds):
            shift = r % len(configs)
            order = configs[shift:] + configs[:shift]
            row: dict[str, Any] = {"round": r + 1, "load": load()}
            for c in order:
                clients[c].run(messages, a.warmup, sent[c])
                sent[c] += a.warmup
                cpu0, kids0 = cpu_seconds(servers[c]), children_cpu(servers[c])
                times = clients[c].run(messages, a.requests, sent[c])
                cpu[c] += cpu_seconds(servers[c]) - cpu0
                sender_cpu[c] += children_cpu(servers[c]) - kids0
                sent[c] += a.requests
                row[f"{c}_p50_ms"], row[f"{c}_p99_ms"] = pct(times, 50), pct(times, 99)
            for c in configs[1:]:
                for q in ("p50", "p99"):
                    row[f"added_{c}_{q}_ms"] = row[f"{c}_{q}_ms"] - row[f"plain_{q}_ms"]
            rounds.append(row)
            print("round " + " ".join(f"{k}={rounded(v)}" for k, v in row.items()), flush=True)
        deadline = time.monotonic() + 30  # the logged server's queue drains into the sink
        while time.monotonic() < deadline:
            logged = server_metrics(servers["logged"])
            done = logged.get("recpipe_inference_log_sent_total", 0.0) + sum(
                v for k, v in logged.items() if k.startswith("recpipe_inference_log_dropped")
            )
            if done >= 2 * sent["logged"]:  # (logged_before's events drain alongside)
                break
            time.sleep(0.2)
        sink_cpu = cpu_seconds(sink.proc.pid) - sink_cpu0
        dead = server_metrics(servers["dead"])
        for client in clients.values():
            client.close()
    finally:
        for s in servers.values():
            s.stop()
        code, peak_mib = sink.stop()
        instant.stop()
    rows, _ids = written_ids(sink.output)
    shutil.rmtree(folder, ignore_errors=True)
    timed = a.rounds * a.requests
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k not in ("round",)}
    result: dict[str, Any] = {
        "rounds": a.rounds,
        "requests_per_round": a.requests,
        "median": median,
        "server_cpu_ms_per_request": {c: cpu[c] * 1000 / timed for c in configs},
        "sender_process_cpu_ms_per_request": {c: sender_cpu[c] * 1000 / timed for c in configs},
        "sink_cpu_ms_per_prediction": sink_cpu * 1000 / max(sent["logged"] + sent.get(BEFORE, 0), 1),
        "sink_exit": code,
        "sink_peak_rss_mib": peak_mib,
        "logged_requests": sent["logged"],
        "logged_server": logged,
        "rows_written": rows,
        "dead_server": dead,
        "goal_added_p99_ms": GOAL_ADDED_P99_MS,
        "met_logged": median["added_logged_p99_ms"] <= GOAL_ADDED_P99_MS,
        "met_dead": median["added_dead_p99_ms"] <= GOAL_ADDED_P99_MS,
        "met_instant": median["added_instant_p99_ms"] <= GOAL_ADDED_P99_MS,
    }
    if a.baseline:
        before = median[f"added_{BEFORE}_p99_ms"]
        result["added_p99_vs_baseline"] = (
            median["added_logged_p99_ms"] / before if before > 0 else float("nan")
        )
    print("median " + " ".join(f"{k}={rounded(v)}" for k, v in median.items()))
    print(f"load average at end: {os.getloadavg()}")
    print("RESULT serving_logging " + json.dumps(tree(result)))


if __name__ == "__main__":
    main()
