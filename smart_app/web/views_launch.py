"""Launch routes: EHR launch (`/launch?iss&launch`), standalone launch (`/standalone`), the OAuth callback.

The `iss` an EHR sends is checked against the configured allow-list before anything else happens: an unknown
issuer gets a page saying so, never a redirect (the app would otherwise send the browser, with a `launch`
value, wherever a link told it to).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from smart_app.discovery import SmartConfiguration
from smart_app.web import oauth
from smart_app.web.app import web_state
from smart_app.web.config import IssuerConfig
from smart_app.web.security import current_session, ensure_session, rotate_session
from smart_app.web.sessions import LaunchMode, LaunchSession, PendingAuth, new_secret

log = logging.getLogger(__name__)

bp = Blueprint("launch", __name__)

MAX_PARAM = 2048  # longest iss / launch / code / state accepted


def _param(name: str) -> str | None:
    value = request.args.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_PARAM:
        raise oauth.LaunchError("Bad request", f"The '{name}' parameter is too long.", 400)
    return value.strip()


def _allowed_issuer(iss: str | None) -> IssuerConfig:
    if iss is None:
        raise oauth.LaunchError(
            "Missing EHR",
            "The launch did not say which EHR it came from (no 'iss' parameter). Open the app from your EHR.",
            400,
        )
    issuer = web_state().config.issuer_for(iss)
    if issuer is None:
        log.warning("launch refused: issuer not on the allow-list")
        raise oauth.LaunchError(
            "Unknown EHR",
            f"This app is not configured for the EHR at {iss}. Ask your administrator to add it to the app's "
            "configuration; nothing was sent to it.",
            403,
        )
    return issuer


def _begin(issuer: IssuerConfig, mode: LaunchMode, launch: str | None) -> Any:
    state = web_state()
    smart = state.discovery.get(issuer)
    scope = oauth.launch_scopes(issuer, smart, mode)
    session = ensure_session(state.store)
    request_ = oauth.authorization_request(
        issuer,
        smart,
        scope=scope,
        redirect_uri=state.config.redirect_uri,
        state=new_secret(),
        launch=launch,
    )
    state.store.add_pending(
        PendingAuth(
            state=request_.state,
            sid=session.sid,
            issuer=issuer,
            smart=smart,
            mode=mode,
            scope=scope,
            redirect_uri=state.config.redirect_uri,
            code_verifier=request_.code_verifier,
            nonce=request_.nonce,
            launch=launch,
        )
    )
    log.info("launch (%s) from issuer %s: sent to authorize", mode, issuer.name)
    return redirect(request_.url, code=302)


@bp.get("/")
def home() -> Any:
    config = web_state().config
    return render_template("home.html", issuers=config.issuers, launch_url=config.launch_url)


@bp.get("/launch")
def ehr_launch() -> Any:
    issuer = _allowed_issuer(_param("iss"))
    launch = _param("launch")
    if launch is None:
        raise oauth.LaunchError(
            "Missing launch",
            "An EHR launch needs the 'launch' parameter the EHR sends with 'iss'. Open the app from your "
            "EHR, or use a standalone launch from the app's start page.",
            400,
        )
    return _begin(issuer, "ehr", launch)


@bp.get("/standalone")
def standalone_launch() -> Any:
    issuer = _allowed_issuer(_param("iss"))
    who = request.args.get("as", "patient")
    if who not in ("patient", "practitioner"):
        raise oauth.LaunchError("Bad request", "'as' must be patient or practitioner.", 400)
    return _begin(issuer, "standalone-patient" if who == "patient" else "standalone-user", None)


@bp.get("/callback")
def callback() -> Any:
    state = web_state()
    value = _param("state")
    if value is None:
        raise oauth.LaunchError("Sign-in refused", "The EHR's answer carries no 'state'.", 400)
    pending = state.store.take_pending(value)
    session = current_session()
    if pending is None or session is None or pending.sid != session.sid:
        # Unknown, used, expired, or begun in another browser: never exchange the code.
        log.warning("callback refused: state unknown, already used, expired or from another browser session")
        raise oauth.LaunchError(
            "Sign-in refused",
            "This sign-in answer does not match a sign-in started in this browser (unknown, expired or "
            "already used 'state'). Open the app again from the EHR.",
            400,
        )
    if _param("error") is not None:
        detail = _param("error_description")
        raise oauth.LaunchError(
            "Sign-in not completed",
            f"The EHR answered '{_param('error')}'" + (f": {detail}" if detail else "") + ".",
            400,
        )
    code = _param("code")
    if code is None:
        raise oauth.LaunchError("Sign-in refused", "The EHR's answer carries no authorization code.", 400)
    token = oauth.exchange_code(
        pending.issuer,
        pending.smart,
        code=code,
        code_verifier=pending.code_verifier,
        redirect_uri=pending.redirect_uri,
    )
    launch = _launch_from_token(pending, token)
    session = rotate_session(state.store)
    state.store.add_launch(session, launch)
    log.info(
        "launch %s complete (issuer %s, patient in context: %s)",
        pending.mode,
        pending.issuer.name,
        launch.patient or "none",
    )
    if launch.patient is not None:
        target = url_for("patient.month", lid=launch.id, pid=launch.patient)
    else:
        target = url_for("panel.panel", lid=launch.id)
    return redirect(target, code=303)


def _launch_from_token(pending: PendingAuth, token: dict[str, Any]) -> LaunchSession:
    now = time.time()
    tokens = oauth.token_set(token, pending.scope, now)
    context = oauth.launch_context(token)
    if pending.mode == "standalone-patient" and context.patient is None:
        raise oauth.LaunchError("No patient chosen", "The EHR did not say which patient to open.", 400)
    granted = frozenset(tokens.scope.split())
    fhir_user = _fhir_user(pending, token, granted)
    return LaunchSession(
        id=new_secret(16),
        issuer=pending.issuer,
        smart=pending.smart,
        mode=pending.mode,
        patient=context.patient,
        fhir_user=fhir_user,
        need_patient_banner=context.need_patient_banner,
        granted=granted,
        keeper=oauth.TokenKeeper(tokens, oauth.refresher_for(pending.issuer, pending.smart)),
        created_at=now,
    )


def _fhir_user(pending: PendingAuth, token: dict[str, Any], granted: frozenset[str]) -> str | None:
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        return None  # the EHR did not identify the user (openid not granted, or not supported)
    issuers = {pending.issuer.iss}
    smart: SmartConfiguration = pending.smart
    if smart.issuer:
        issuers.add(smart.issuer)
    claims = oauth.verify_id_token(
        id_token, client_id=pending.issuer.client_id, issuers=issuers, nonce=pending.nonce
    )
    return oauth.fhir_user_reference(claims.get("fhirUser"))
