"""An open-loop, fixed-rate HTTP load generator (standard library only, its own process).

Deliberately none of the server's code: it speaks HTTP/1.1 keep-alive over raw asyncio
streams. Requests are due at fixed times (start + i / rate) whatever earlier requests did,
and latency is measured from the *due* time, so a stalled server shows up in the
percentiles instead of silently lowering the offered rate (no coordinated omission).

    python benchmarks/serving_loadgen.py --url http://127.0.0.1:8080/v1/models/m:predict \
        --bodies bodies.jsonl --rate 200 --duration 20

prints one JSON object: offered and achieved rate, ok/error counts, latency percentiles (ms).
Bounded: it sends at most rate * duration requests and stops after duration + timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


class Connection:
    """One keep-alive HTTP/1.1 connection; `closing` once the server said `Connection: close`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closing = False

    async def request(self, head: bytes, body: bytes) -> int:
        """Send one request, read its whole answer; returns the status."""
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                self.closing = True
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def run(
    url: str,
    bodies: list[bytes],
    rate: float,
    duration: float,
    max_connections: int,
    timeout: float,
) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load a non-loopback address: {host}")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    heads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        for b in bodies
    ]
    idle: list[Connection] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []  # of 200 answers only, from the due time
    service: list[float] = []  # the same answers from the moment they were sent
    errors = 0  # non-200 answers, connection failures and timeouts
    total = int(rate * duration)

    async def one(i: int, due: float) -> None:
        nonlocal opened, errors
        async with slots:  # waiting for a free connection counts as latency
            if idle:
                conn = idle.pop()
            else:
                reader, writer = await asyncio.open_connection(host, port)
                conn = Connection(reader, writer)
                opened += 1
            sent = time.perf_counter()
            try:
                status = await asyncio.wait_for(
                    conn.request(heads[i % len(bodies)], bodies[i % len(bodies)]), timeout
                )
            except (TimeoutError, OSError, ValueError, IndexError):
                errors += 1
                conn.close()
                return
            if status == 200:
                now = time.perf_counter()
                latencies.append((now - due) * 1000)
                service.append((now - sent) * 1000)
            else:
                errors += 1
            idle.append(conn)

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    send_end = time.perf_counter()
    _done, pending = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
    for t in pending:
        t.cancel()
    end = time.perf_counter()
    for c in idle:
        c.close()
    lat, sent_lat = sorted(latencies), sorted(service)

    def pct(p: float, values: list[float] = lat) -> float:
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]

    return {
        "offered_rps": rate,
        "achieved_rps": len(lat) / max(end - start, 1e-9),
        "send_seconds": send_end - start,
        "requests": total,
        "ok": len(lat),
        "errors": errors + len(pending),
        "connections": opened,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": lat[-1] if lat else float("nan"),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        # from the actual send: hides generator stalls, shown to tell them from server ones
        "p50_sent_ms": pct(50, sent_lat),
        "p99_sent_ms": pct(99, sent_lat),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", required=True, help="file with one JSON request body per line")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of sending (<= 300)")
    p.add_argument("--connections", type=int, default=32, help="most open connections")
    p.add_argument("--timeout", type=float, default=10.0, help="per request, and for the tail")
    a = p.parse_args()
    if not 0 < a.duration <= 300 or not 0 < a.rate <= 20_000:
        raise SystemExit("--duration must be in (0, 300] s and --rate in (0, 20000]")
    with open(a.bodies, "rb") as f:
        bodies = [line.strip() for line in f if line.strip()]
    result = asyncio.run(run(a.url, bodies, a.rate, a.duration, a.connections, a.timeout))
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
