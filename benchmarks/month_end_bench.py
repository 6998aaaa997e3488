"""Month-end against the sandbox EHR with added server latency. Prints figures; asserts nothing.

    python benchmarks/month_end_bench.py [--patients 40] [--latency-ms 20] [--concurrency 1,8] [--repeat 1]

For each concurrency a fresh sandbox, in its own process, is loaded with the same N synthetic patients and
every request it serves waits `--latency-ms` first (a Flask before_request hook), as a remote EHR would.
Month-end then runs for the whole population (reads and writes, as in production) and the bench prints the
read and write requests per patient (counted by the server) and patients per second. Targets (issue 4): at
most 6 read and 2 write requests per patient, and concurrency 8 at least 4x faster than concurrency 1 at
20 ms latency.

Client and server share the machine's cores, so other work on it moves the figures, concurrency 8 most (it
is the one that needs both cores): `--repeat N` runs the levels N times, in turn, and gives the speed-up of
the median times.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import re
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from billing.periods import YearMonth, local_midnight, zone  # noqa: E402
from fhir_mapping.outbound import WriteSettings  # noqa: E402
from smart_app.fhir_client import FhirClient  # noqa: E402
from smart_app.month_end import run_month_end  # noqa: E402
from smart_app.pipeline import RunOptions  # noqa: E402
from smart_app.reads import population  # noqa: E402
from smart_app.sandbox.app import SandboxConfig, start_sandbox  # noqa: E402

# Bundle.type of a batch or transaction (no other element holds these codes as a JSON string)
BUNDLE_TYPE = re.compile(rb'"type"\s*:\s*"(batch|transaction)"')


class RequestCounter:
    """Counts what the sandbox serves: reads (GET, batch) and writes (transaction, PUT, POST)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    @staticmethod
    def kind(method: str, path: str, body: bytes) -> str:
        """A POSTed Bundle is a read when it is a batch (the client's batches hold only GETs). The body is
        not parsed: the counter runs inside the measured server, which parses it once already."""
        if method == "GET":
            return "metadata" if path.endswith("/metadata") else "read"
        found = BUNDLE_TYPE.search(body)  # an escaped quote inside a string value cannot match
        return "read" if found and found.group(1) == b"batch" else "write"

    def add(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1


def serve(patients: int, month: str, latency: float, pipe: Connection) -> None:
    """The sandbox in its own process (a remote EHR does not share our interpreter), every request slowed
    down by `latency`. Sends its FHIR base through `pipe`, then serves until told to stop."""
    from flask import jsonify, request

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counter = RequestCounter()
    sandbox = start_sandbox(
        SandboxConfig(patients=patients, month=month, require_auth=False, timezone="America/New_York")
    )

    def slow_down() -> Any:
        if request.path == "/bench/counts":
            return jsonify(dict(counter.counts))
        body = request.get_data(cache=True) if request.method == "POST" else b""  # kept for the sandbox
        counter.add(counter.kind(request.method, request.path, body))
        time.sleep(latency)
        return None

    sandbox.app.before_request(slow_down)  # registered before the first request is served
    sandbox.app.add_url_rule("/bench/counts", "bench_counts", lambda: jsonify({}))
    pipe.send(sandbox.fhir_base)
    pipe.recv()  # until the bench is done
    sandbox.stop()


def run_once(patients: int, month: str, latency: float, concurrency: int) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(patients, month, latency, child), daemon=True)
    server.start()
    try:
        base: str = parent.recv()
        counts_url = base.rsplit("/fhir", 1)[0] + "/bench/counts"
        ym = YearMonth.parse(month)
        as_of = local_midnight(ym.next().first_day, zone("America/New_York")) + timedelta(days=20)
        options = RunOptions(month=ym, as_of=as_of)
        with FhirClient(base, pool_size=concurrency) as client:
            ids = population(client, group=None, patients=[], options=options)
            before = Counter(requests.get(counts_url, timeout=30).json())
            started = time.perf_counter()
            run = run_month_end(client, ids, options, WriteSettings(), concurrency=concurrency)
            elapsed = time.perf_counter() - started
            served = Counter(requests.get(counts_url, timeout=30).json()) - before
    finally:
        parent.send("stop")
        server.join(timeout=30)
    n = len(ids)
    summary = run.summary()
    return {
        "concurrency": concurrency,
        "patients": n,
        "failed": summary["failed"],
        "codes": summary["codes"],
        "seconds": round(elapsed, 3),
        "patients_per_second": round(n / elapsed, 2) if elapsed else None,
        "reads_per_patient": round(served["read"] / n, 2) if n else None,
        "writes_per_patient": round(served["write"] / n, 2) if n else None,
        "client_reads_per_patient": summary["read_requests_per_patient"],
        "client_writes_per_patient": summary["write_requests_per_patient"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels, e.g. 1,4,8")
    parser.add_argument("--month", default="2026-10", help="month of the synthetic data and of the run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--repeat", type=int, default=1, help="run the levels N times, in turn; medians")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    rows = [
        run_once(args.patients, args.month, args.latency_ms / 1000, c)
        for _ in range(max(1, args.repeat))
        for c in levels
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"month-end on the sandbox: {args.patients} synthetic patients (those with RPM consent are billed), "
        f"{args.latency_ms:g} ms added per request, month {args.month}"
    )
    titles = ("concurrency", "patients", "reads/pt", "writes/pt", "patients/s", "s")
    print("  ".join(f"{t:>{w}}" for t, w in zip(titles, (11, 8, 8, 9, 10, 7), strict=True)))
    for row in rows:
        print(
            f"{row['concurrency']:>11}  {row['patients']:>8}  {row['reads_per_patient']:>8}  "
            f"{row['writes_per_patient']:>9}  {row['patients_per_second']:>10}  {row['seconds']:>7}"
        )
    medians = {c: statistics.median(r["seconds"] for r in rows if r["concurrency"] == c) for c in levels}
    if len(levels) > 1 and medians[levels[0]]:
        for level in levels[1:]:
            median = " (median times)" if args.repeat > 1 else ""
            print(f"speed-up at concurrency {level}: {medians[levels[0]] / medians[level]:.1f}x{median}")
    failed = sum(row["failed"] for row in rows)
    if failed:
        print(f"{failed} patient(s) failed: see the run with --json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
