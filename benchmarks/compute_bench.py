"""Throughput and memory of `compute` against two baselines. Prints figures; asserts nothing.

    python benchmarks/compute_bench.py [--patients 10000] [--month 2026-03] [--keep DIR] [--repeat N]

(a) `rpm-billing compute` end to end, as the command line runs it (imports, read, map, bill, the table;
no output files), (b) parse-only with the json module (the floor), (c) parsing the same resources into
fhir.resources R4B models (what a typical integrator writes). Each mode runs in its own process so that its
peak RSS is its own. Targets (issue 2): (a) >= 100,000 resources/s on one core and >= 0.3x of (b); memory
that grows with patients, not resources.

On a shared machine CPU times vary from run to run; `--repeat N` runs every mode N times (interleaved) and
keeps each mode's fastest run, so that (a) and (b) are compared under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_this_tree() -> None:
    """Import the packages next to this file, not whatever an installed (editable) copy points at."""
    if sys.path[0] != str(ROOT):
        sys.path.insert(0, str(ROOT))


def generate(patients: int, month: str, out: Path) -> int:
    use_this_tree()
    from smart_app.synth import generate as synth
    from smart_app.synth import write_bulk

    counts = write_bulk(synth(patients, month, seed=7), out)
    return sum(counts.values())


def mode_compute(path: Path, month: str) -> int | None:
    """`rpm-billing compute --input PATH --month M` as the command line runs it (its table to a buffer)."""
    import contextlib
    import io

    from smart_app.cli import main as rpm_billing

    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        code = rpm_billing(["compute", "--input", str(path), "--month", month, "--as-of", AS_OF])
    if code not in (0, 4):  # 4: finished with skipped resources
        raise SystemExit(f"compute exited with {code}")
    return None  # the resources are counted after the clock stops


AS_OF = "2030-01-01T00:00:00+00:00"  # every period closed: final codes, as at a month-end


def count_resources(path: Path) -> int:
    """Non-blank NDJSON lines: one resource each in the generated data."""
    count = 0
    for file in path.glob("*.ndjson"):
        with file.open("rb") as handle:
            count += sum(1 for line in handle if line.strip())
    return count


def mode_json(path: Path, month: str) -> int:
    count = 0
    for file in sorted(path.glob("*.ndjson")):
        with file.open(encoding="utf-8") as handle:
            for line in handle:
                json.loads(line)
                count += 1
    return count


def mode_models(path: Path, month: str) -> int:
    import importlib

    count = 0
    models: dict[str, type] = {}
    for file in sorted(path.glob("*.ndjson")):
        with file.open(encoding="utf-8") as handle:
            for line in handle:
                data = json.loads(line)
                kind = data["resourceType"]
                if kind not in models:
                    module = importlib.import_module(f"fhir.resources.R4B.{kind.lower()}")
                    models[kind] = getattr(module, kind)
                models[kind].model_validate(data)  # type: ignore[attr-defined]
                count += 1
    return count


MODES = {"compute": mode_compute, "json": mode_json, "models": mode_models}


def child(mode: str, path: Path, month: str) -> None:
    use_this_tree()
    start = time.perf_counter()
    cpu_start = time.process_time()
    counted = MODES[mode](path, month)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    count = counted if counted is not None else count_resources(path)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"mode": mode, "resources": count, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_kib / 1024}
        )
    )


def run_child(mode: str, path: Path, month: str) -> dict:
    # Bytecode caching on, as an installed package has it (pip compiles the modules when it installs them):
    # with PYTHONDONTWRITEBYTECODE set, every run would compile the project's modules from source.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--input", str(path), "--month", month],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--month", default="2026-03")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the fastest counts")
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.input, args.month)
        return
    busy = os.getloadavg()[0]
    if busy > 0.5:  # CPU seconds grow when the other core (often a hyperthread of the same one) is busy
        print(f"note: load average {busy:.2f}; other work running now makes these figures 10-15 % lower")
    with tempfile.TemporaryDirectory(prefix="rpm-bench-") as tmp:
        results = {}
        for n in sorted({max(1, args.patients // 2), args.patients}):
            folder = (args.keep / str(n)) if args.keep else Path(tmp) / str(n)
            if not (folder / "Observation.ndjson").exists():
                folder.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                total = generate(n, args.month, folder)
                print(f"generated {n} patients, {total} resources in {time.perf_counter() - t0:.1f} s")
            modes = ("compute", "json", "models") if n == args.patients else ("compute",)
            runs: dict[str, list[dict]] = {m: [] for m in modes}
            for _ in range(max(1, args.repeat)):
                for m in modes:
                    runs[m].append(run_child(m, folder, args.month))
            results[n] = {m: min(runs[m], key=lambda figures: figures["cpu_s"]) for m in modes}
        full = results[args.patients]
        floor = full["json"]["resources"] / full["json"]["cpu_s"]
        print(f"\n{'mode':<34}{'resources':>10}{'res/s (cpu)':>14}{'peak RSS MiB':>14}")
        labels = {
            "compute": "(a) compute end to end",
            "json": "(b) json parse only (floor)",
            "models": "(c) fhir.resources R4B models",
        }
        for mode, figures in full.items():
            rate = figures["resources"] / figures["cpu_s"]
            print(
                f"{labels[mode]:<34}{figures['resources']:>10}{rate:>14,.0f}{figures['peak_rss_mib']:>14.1f}"
            )
        rate_a = full["compute"]["resources"] / full["compute"]["cpu_s"]
        print(
            f"\n(a) / (b) = {rate_a / floor:.2f} (target >= 0.3); "
            f"(a) = {rate_a:,.0f} res/s (target >= 100,000)"
        )
        if len(results) > 1:
            half = min(results)
            grow = full["compute"]["peak_rss_mib"] - results[half]["compute"]["peak_rss_mib"]
            print(
                f"memory: {results[half]['compute']['peak_rss_mib']:.1f} MiB at {half} patients, "
                f"{full['compute']['peak_rss_mib']:.1f} MiB at {args.patients}: "
                f"{grow * 1024 / (args.patients - half):.1f} KiB per added patient"
            )


if __name__ == "__main__":
    main()
