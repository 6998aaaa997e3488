"""Browser-facing security of the web app: the session cookie, CSRF, and response headers.

- The session cookie holds one opaque random id and nothing else (tokens and OAuth state stay on the
  server). HttpOnly; `SameSite=Lax` on http (loopback, the sandbox) and `SameSite=None; Secure; Partitioned`
  behind https, so the app keeps its session inside a cross-site EHR iframe; `__Host-` prefixed when
  Secure. The id is rotated when a sign-in completes.
- Every POST must carry the session's CSRF token (form field `csrf_token`), compared in constant time.
- A strict Content-Security-Policy: nothing but the app's own stylesheet; no scripts at all; forms post
  only to the app; `frame-ancestors` from the configuration (no X-Frame-Options, which would forbid the EHR
  iframe). Pages with patient data are `Cache-Control: no-store`; no Referer leaves the app (URLs carry
  launch ids and, on the callback, the authorization code).
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, abort, g, request

from smart_app.web.config import WebConfig
from smart_app.web.sessions import BrowserSession, SessionStore

CSRF_FIELD = "csrf_token"


def cookie_name(config: WebConfig) -> str:
    # `__Host-`: the browser accepts it only Secure, from this origin, Path=/ and without Domain.
    return "__Host-rpm_sid" if config.secure else "rpm_sid"


def content_security_policy(config: WebConfig) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            "style-src 'self'",
            "img-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors " + " ".join(config.ancestors()),
        )
    )


def current_session() -> BrowserSession | None:
    session: BrowserSession | None = g.get("browser_session")
    return session


def ensure_session(store: SessionStore) -> BrowserSession:
    """The caller's browser session, created (and its cookie set on the response) when there is none."""
    session = current_session()
    if session is None:
        session = store.new_session()
        g.browser_session = session
        g.set_cookie = True
    return session


def rotate_session(store: SessionStore) -> BrowserSession:
    """A new session id (and CSRF token) for the caller, keeping its launches and pending sign-ins."""
    old = current_session()
    session = store.rotate(old) if old is not None else store.new_session()
    g.browser_session = session
    g.set_cookie = True
    return session


def csrf_ok(session: BrowserSession | None, submitted: str | None) -> bool:
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def install(app: Flask, config: WebConfig, store: SessionStore) -> None:
    """Session loading, the CSRF check on every POST, the cookie and the security headers."""
    name = cookie_name(config)
    policy = content_security_policy(config)

    @app.before_request
    def load_session() -> None:
        g.browser_session = store.get(request.cookies.get(name))
        g.set_cookie = False
        if request.method == "POST" and not csrf_ok(g.browser_session, request.form.get(CSRF_FIELD)):
            abort(400, description="csrf")

    @app.context_processor
    def csrf_field() -> dict[str, str]:
        session = current_session()
        return {"csrf_token": session.csrf if session is not None else "", "csrf_field": CSRF_FIELD}

    @app.after_request
    def headers(response: Response) -> Response:
        session = current_session()
        if g.get("set_cookie") and session is not None:
            response.set_cookie(
                name,
                session.sid,
                httponly=True,
                secure=config.secure,
                samesite=config.samesite,
                path="/",
                partitioned=config.secure and config.samesite == "None",
            )
        response.headers["Content-Security-Policy"] = policy
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        return response
