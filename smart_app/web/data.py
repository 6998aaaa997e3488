"""Reading a patient's month (and the panel) for the web app, on the shared month-end reads and engine.

One patient: `smart_app.reads.fetch_patient_month` (a round of batched, parallel-safe reads) then
`smart_app.pipeline.evaluate`. The panel: the RPM population (`smart_app.reads.population`, patients with
RPM consent reaching the month) read and evaluated in parallel, a thread per patient up to `workers`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime

from billing.periods import YearMonth, zone
from billing.result import MonthResult
from fhir_mapping.canon import CANON
from smart_app.fhir_client import FhirClient
from smart_app.http import FhirError
from smart_app.pipeline import RunOptions, evaluate
from smart_app.reads import PatientFetch, fetch_patient_month, population
from smart_app.web.config import WebConfig
from smart_app.web.oauth import LaunchAuth
from smart_app.web.sessions import LaunchSession

CLIENT_KEY = "fhir_client"
FHIR_TIMEOUT: tuple[float, float] = (5.0, 20.0)  # a person is waiting: fail sooner than month-end would


@dataclass(frozen=True)
class MonthData:
    fetch: PatientFetch
    result: MonthResult
    options: RunOptions
    today: date
    now: datetime
    elapsed_ms: int


@dataclass(frozen=True)
class PanelRow:
    patient_id: str
    name: str
    result: MonthResult | None
    problem: str | None = None  # why this patient could not be read


def canon(config: WebConfig) -> str:
    return (config.canon or CANON).rstrip("/")


def run_options(config: WebConfig, now: datetime, month: YearMonth) -> RunOptions:
    return RunOptions(month=month, as_of=now, policy_name=config.policy, settings=dict(config.settings))


def local_now(config: WebConfig, now: datetime) -> datetime:
    """`now` in the practice time zone (the configured one, else the policy's default)."""
    probe = run_options(config, now, YearMonth.of(now.date()))
    return now.astimezone(zone(probe.timezone))


def fhir_client(launch: LaunchSession, config: WebConfig) -> FhirClient:
    """The launch's FHIR client (one per launch, pooled connections, the launch's tokens)."""
    with launch.lock:
        client = launch.resources.get(CLIENT_KEY)
        if client is None:
            client = FhirClient(
                launch.fhir_base,
                LaunchAuth(launch.keeper),
                timeout=FHIR_TIMEOUT,
                max_attempts=2,
                pool_size=config.workers,
            )
            launch.resources[CLIENT_KEY] = client
        return client


def load_month(
    launch: LaunchSession, config: WebConfig, patient_id: str, month: YearMonth, now: datetime
) -> MonthData:
    """One round of reads for the patient and month, then the engine."""
    started = time.perf_counter()
    options = run_options(config, now, month)
    client = fhir_client(launch, config)
    fetch = fetch_patient_month(client, patient_id, options, canon=canon(config))
    result = evaluate(fetch.records, options)
    local = now.astimezone(zone(options.timezone))
    return MonthData(
        fetch=fetch,
        result=result,
        options=options,
        today=local.date(),
        now=local,
        elapsed_ms=int((time.perf_counter() - started) * 1000),
    )


def load_panel(
    launch: LaunchSession,
    config: WebConfig,
    month: YearMonth,
    now: datetime,
) -> tuple[list[PanelRow], bool]:
    """The RPM patients of the month with their results, and whether the list was cut at `panel_limit`.

    A patient whose reads fail is listed with the problem (never dropped silently).
    """
    options = run_options(config, now, month)
    client = fhir_client(launch, config)
    ids = population(client, group=None, patients=(), options=options, canon=canon(config))
    truncated = len(ids) > config.panel_limit
    ids = ids[: config.panel_limit]

    def one(pid: str) -> PanelRow:
        try:
            fetch = fetch_patient_month(client, pid, options, canon=canon(config))
        except FhirError as exc:
            return PanelRow(pid, pid, None, exc.message)
        result = evaluate(fetch.records, options)
        return PanelRow(pid, fetch.records.display_name or pid, result)

    with ThreadPoolExecutor(max_workers=min(config.workers, max(1, len(ids)))) as pool:
        rows = list(pool.map(one, ids))
    return rows, truncated
