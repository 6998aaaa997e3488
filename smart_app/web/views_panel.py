"""The panel (`/c/<launch>/panel`): a practitioner launch without a patient lists the month's RPM patients,
with minutes and device days, sorted by who needs attention (smart_app.web.insights.attention)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from smart_app.web import data, insights, oauth
from smart_app.web.app import web_state
from smart_app.web.guards import chosen_month, find_launch, now_and_month

bp = Blueprint("panel", __name__)


@bp.get("/c/<lid>/panel")
def panel(lid: str) -> Any:
    state = web_state()
    launch = find_launch(lid)
    if launch.patient is not None:
        raise oauth.LaunchError(
            "Not available",
            "The panel is for a practitioner launch without a patient; this launch is for one patient.",
            403,
        )
    now, this_month = now_and_month()
    month = chosen_month(this_month)
    rows, truncated = data.load_panel(launch, state.config, month, now)
    today = data.local_now(state.config, now).date()
    ranked = insights.rank_panel([(row.name, row.result) for row in rows if row.result is not None])
    failed = [row for row in rows if row.result is None]
    with launch.lock:
        launch.roster.update(row.patient_id for row in rows)
    windows = {result.patient_id: insights.current_window(result, today) for _, result, _ in ranked}
    return render_template(
        "panel.html",
        launch=launch,
        lid=lid,
        banner=None,
        month=str(month),
        prev_month=str(month.previous()),
        next_month=str(month.next()) if month < this_month else None,
        max_month=str(this_month),
        ranked=ranked,
        windows=windows,
        failed=failed,
        truncated=truncated,
        limit=state.config.panel_limit,
    )
