"""What every page of a launch checks first: the launch belongs to the caller's browser session, the patient
is the one in the launch context, and the month asked for has started."""

from __future__ import annotations

import logging
from datetime import datetime

from flask import request

from billing.periods import PeriodError, YearMonth
from smart_app.web import data, oauth
from smart_app.web.app import web_state
from smart_app.web.security import current_session
from smart_app.web.sessions import LaunchSession

log = logging.getLogger(__name__)


def find_launch(lid: str) -> LaunchSession:
    """The launch `lid` of THIS browser session; 403 for an unknown one or another session's."""
    launch = web_state().store.launch(current_session(), lid)
    if launch is None:
        raise oauth.LaunchError(
            "Launch not found",
            "This page belongs to a launch that has ended or to another browser session. Open the app again "
            "from the EHR.",
            403,
        )
    return launch


def check_patient(launch: LaunchSession, pid: str) -> None:
    """The app shows only the patient in the launch context (or one its panel listed): else 403."""
    if not launch.may_open(pid):
        log.warning("refused: a URL named a patient outside the launch context")
        raise oauth.LaunchError(
            "Not this patient",
            "This app was opened for another patient. It shows only the patient in the EHR's launch context.",
            403,
        )


def now_and_month() -> tuple[datetime, YearMonth]:
    """The app's clock reading and the current month in the practice time zone."""
    state = web_state()
    now = state.clock()
    return now, YearMonth.of(data.local_now(state.config, now).date())


def chosen_month(this_month: YearMonth) -> YearMonth:
    """`?month=YYYY-MM` (default: this month); a month not yet started is refused."""
    text = request.args.get("month") or request.form.get("month")
    if not text:
        return this_month
    try:
        month = YearMonth.parse(text)
    except PeriodError:
        raise oauth.LaunchError("Bad month", "The month must be written YYYY-MM.", 400) from None
    if month > this_month:
        raise oauth.LaunchError("Month not started", f"{month} has not started yet.", 400)
    return month


def banner(launch: LaunchSession, pid: str, name: str | None) -> dict[str, str | None] | None:
    """The patient banner, when the EHR says the app must show one (SMART `need_patient_banner`)."""
    if not launch.need_patient_banner:
        return None
    return {"id": pid, "name": name}
