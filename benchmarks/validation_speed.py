"""Figure: time and peak memory of the validation gate on N synthetic events.

What is timed is the pipeline step's work, `run_gate` minus KFP: read the CSV, map it onto
the contract, run the Great Expectations suites, render the Data Docs page and the
Markdown summary, write the validated events (Parquet). Each run is a fresh process, so
the peak RSS is that of one step; library imports (Great Expectations alone takes ~2-3 s)
are timed apart, and `process_s` is the whole process, start to exit, as a KFP task sees it.

    .venv/bin/python benchmarks/validation_speed.py --rows 1000000 --repeat 3
    .venv/bin/python benchmarks/validation_speed.py --rows 10000000 --repeat 1
    .venv/bin/python benchmarks/validation_speed.py --source online-retail   # a real source

Prints one result line and an environment line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = 1_672_531_200  # 2023-01-01
TYPES = ("view", "view", "view", "click", "add_to_cart", "purchase")


def write_events(path: Path, rows: int, seed: int = 7) -> None:
    """Shop-like events: Zipf item popularity, ~10 events per user, three event types."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    users = max(2, rows // 10)
    items = max(2, rows // 50)
    item = np.minimum(rng.zipf(1.3, rows) - 1, items - 1)
    kind = rng.integers(0, len(TYPES), rows)
    bought = np.asarray(TYPES)[kind] == "purchase"
    table = pa.table(
        {
            "user_id": pa.array(np.char.add("u", rng.integers(0, users, rows).astype(str))),
            "item_id": pa.array(np.char.add("sku-", item.astype(str))),
            "timestamp": np.sort(rng.integers(T0, T0 + 300 * 86_400, rows)),
            "event_type": pa.array(np.asarray(TYPES)[kind]),
            "quantity": pa.array(np.where(bought, rng.integers(1, 4, rows), 0), mask=~bought),
            "price": pa.array(np.round(rng.uniform(1, 200, rows), 2), mask=~bought),
        }
    )
    pacsv.write_csv(table, path)


def child(data: str, out: str, source_name: str) -> None:
    """One measured run (in its own process)."""
    t_start = time.perf_counter()
    import great_expectations  # noqa: F401  (timed as imports, not as validation)
    import pyarrow.csv  # noqa: F401

    from recpipe.validation.config import ValidationConfig
    from recpipe.validation.gate import run_gate
    from recpipe.validation.sources import resolve_source

    source = resolve_source(source_name)
    t_imported = time.perf_counter()
    o = Path(out)
    result = run_gate(
        data, ValidationConfig(), source, o / "events", o / "docs.html", o / "report.md"
    )
    t_done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rows": result.rows,
                "rows_read": result.rows_read,
                "passed": result.passed,
                "checks": result.checks,
                "import_s": t_imported - t_start,
                "gate_s": t_done - t_imported,
                "peak_mb": peak_mb,
                "docs_kb": (o / "docs.html").stat().st_size / 1024,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", help="where the synthetic CSV is kept between runs")
    p.add_argument("--source", help="validate this source's own files instead (e.g. online-retail)")
    p.add_argument("--child", nargs=3, metavar=("DATA", "OUT", "SOURCE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(*a.child)
        return
    from _env import environment

    work = Path(a.workdir or tempfile.gettempdir()) / "recpipe-validation-bench"
    work.mkdir(parents=True, exist_ok=True)
    if a.source:
        from recpipe.validation.sources import resolve_source

        data = Path(resolve_source(a.source).uri or "")
    else:
        data = work / f"events-{a.rows}.csv"
        if not data.exists():
            write_events(data, a.rows)
    runs = []
    for _ in range(a.repeat):
        with tempfile.TemporaryDirectory(dir=work) as out:
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(data), out, a.source or "events"],
                capture_output=True,
                text=True,
                check=True,
            )
            run = json.loads(done.stdout.strip().splitlines()[-1])
            run["process_s"] = time.perf_counter() - t
            runs.append(run)
    assert all(r["passed"] for r in runs), runs

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    gate = ", ".join(f"{r['gate_s']:.2f}" for r in runs)
    print(
        f"validation_speed: source={a.source or 'synthetic'} rows={runs[0]['rows_read']} "
        f"valid_rows={runs[0]['rows']} file_mb={data.stat().st_size / 2**20:.0f} "
        f"checks={runs[0]['checks']} gate_s={med('gate_s'):.2f} (median of {len(runs)}: {gate}) "
        f"import_s={med('import_s'):.2f} process_s={med('process_s'):.2f} "
        f"peak_mb={max(r['peak_mb'] for r in runs):.0f} docs_kb={runs[0]['docs_kb']:.0f} "
        f"load_avg={os.getloadavg()[0]:.1f}"
    )
    print(environment())


if __name__ == "__main__":
    main()
