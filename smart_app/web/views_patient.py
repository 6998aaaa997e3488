"""The patient's month (`/c/<launch>/patient/<id>`) and its write-back (review, write, outcome, export).

Every route first finds the launch in the caller's own browser session, then checks the patient: the app
shows only the patient in the launch context (a practitioner launch: only the patients its panel listed).
Another id in the URL is refused with 403, before anything is read from the EHR.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from smart_app.web import data, insights, present, writes
from smart_app.web.app import web_state
from smart_app.web.guards import banner, check_patient, chosen_month, find_launch, now_and_month

bp = Blueprint("patient", __name__)


@bp.get("/c/<lid>/patient/<pid>")
def month(lid: str, pid: str) -> Any:
    state = web_state()
    launch = find_launch(lid)
    check_patient(launch, pid)
    now, this_month = now_and_month()
    month = chosen_month(this_month)
    loaded = data.load_month(launch, state.config, pid, month, now)
    result = loaded.result
    progress = insights.minutes_progress(result.minutes, result.policy)
    return render_template(
        "month.html",
        launch=launch,
        lid=lid,
        pid=pid,
        banner=banner(launch, pid, loaded.fetch.records.display_name),
        month=str(month),
        prev_month=str(month.previous()),
        next_month=str(month.next()) if month < this_month else None,
        max_month=str(this_month),
        result=result,
        tz=result.timezone,
        days_left=insights.days_left_in_month(month, loaded.today),
        progress=progress,
        progress_max=progress[-1].threshold.minutes,
        window=insights.window_view(result, loaded.today),
        suggestions=insights.month_suggestions(result),
        timeline=present.timeline(result),
        consents=present.consent_rows(result, loaded.now),
        consent_summary=present.consent_summary(result, loaded.now),
        codes=present.code_rows(result.codes),
        not_billed=present.not_billed_rows(result.not_billed),
        skipped=loaded.fetch.skipped,
        elapsed_ms=loaded.elapsed_ms,
        requests=loaded.fetch.requests,
    )


@bp.get("/c/<lid>/patient/<pid>/review")
def review(lid: str, pid: str) -> Any:
    launch = find_launch(lid)
    check_patient(launch, pid)
    now, this_month = now_and_month()
    return writes.review_page(launch, pid, chosen_month(this_month), now)


@bp.post("/c/<lid>/patient/<pid>/write")
def write(lid: str, pid: str) -> Any:
    launch = find_launch(lid)
    check_patient(launch, pid)
    outcome_id = writes.apply_reviewed(launch, pid, request.form.get("review", ""))
    return redirect(url_for("patient.written", lid=lid, pid=pid, outcome=outcome_id), code=303)


@bp.get("/c/<lid>/patient/<pid>/written/<outcome>")
def written(lid: str, pid: str, outcome: str) -> Any:
    launch = find_launch(lid)
    check_patient(launch, pid)
    return writes.outcome_page(launch, pid, outcome)


@bp.get("/c/<lid>/patient/<pid>/written/<outcome>/export.ndjson")
def export(lid: str, pid: str, outcome: str) -> Any:
    launch = find_launch(lid)
    check_patient(launch, pid)
    return writes.export(launch, pid, outcome)
