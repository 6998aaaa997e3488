"""The clinician web app (Flask): app factory, shared state, error pages, and serving it on loopback.

`create_app(config)` builds the app; `start_web_app(config)` serves it in a background thread (port 0: any
free port), for `rpm-billing serve`, `rpm-billing try` and the tests. Routes live in the view modules:
launch (`/launch`, `/standalone`, `/callback`), the patient month and write-back (`/c/<launch>/patient/<id>`),
the panel (`/c/<launch>/panel`).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app, render_template
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from smart_app.discovery import DiscoveryError, SmartConfiguration, discover
from smart_app.errors import RpmBillingError, UsageError
from smart_app.http import FhirError, ForbiddenError, UnauthorizedError
from smart_app.web import filters, security
from smart_app.web.config import IssuerConfig, WebConfig
from smart_app.web.oauth import LaunchError
from smart_app.web.sessions import SessionStore

log = logging.getLogger(__name__)

EXTENSION_KEY = "rpm_billing_web"
DISCOVERY_TTL = 300.0

Clock = Callable[[], datetime]


class DiscoveryCache:
    """SMART configurations per issuer, fetched on first launch and kept for a few minutes."""

    def __init__(
        self,
        ttl: float = DISCOVERY_TTL,
        fetch: Callable[[str], SmartConfiguration] | None = None,
    ) -> None:
        self.ttl = ttl
        self._fetch = fetch or (lambda iss: discover(iss, need="launch"))
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, SmartConfiguration]] = {}

    def get(self, issuer: IssuerConfig) -> SmartConfiguration:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(issuer.iss)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            config = self._fetch(issuer.iss)
        except DiscoveryError as exc:
            log.warning("SMART discovery failed for issuer %s: %s", issuer.name, exc)
            raise LaunchError(
                "EHR not reachable", f"The app could not read the SMART configuration of {issuer.iss}.", 502
            ) from None
        with self._lock:
            self._cache[issuer.iss] = (now, config)
        return config


@dataclass
class WebState:
    config: WebConfig
    store: SessionStore
    discovery: DiscoveryCache
    clock: Clock
    extras: dict[str, Any] = field(default_factory=dict)


def web_state() -> WebState:
    state: WebState = current_app.extensions[EXTENSION_KEY]
    return state


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    config: WebConfig,
    *,
    store: SessionStore | None = None,
    discovery: DiscoveryCache | None = None,
    clock: Clock | None = None,
) -> Flask:
    """The web app. `clock` (aware datetimes) decides "now" for the month view; tests pass a fixed one."""
    from smart_app.web import views_launch, views_panel, views_patient

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024, TEMPLATES_AUTO_RELOAD=False)
    state = WebState(
        config=config,
        store=store or SessionStore(),
        discovery=discovery or DiscoveryCache(),
        clock=clock or _utc_now,
    )
    app.extensions[EXTENSION_KEY] = state
    security.install(app, config, state.store)
    filters.install(app)
    app.register_blueprint(views_launch.bp)
    app.register_blueprint(views_patient.bp)
    app.register_blueprint(views_panel.bp)

    @app.errorhandler(LaunchError)
    def launch_error(exc: LaunchError) -> tuple[str, int]:
        return error_page(exc.title, exc.message, exc.status)

    @app.errorhandler(UnauthorizedError)
    def unauthorized(exc: UnauthorizedError) -> tuple[str, int]:
        return error_page(
            "Session expired", "The EHR no longer accepts this sign-in. Open the app again from the EHR.", 401
        )

    @app.errorhandler(ForbiddenError)
    def forbidden(exc: ForbiddenError) -> tuple[str, int]:
        log.info("the EHR refused a request: %s", exc.message)
        return error_page(
            "Not permitted by the EHR",
            "The EHR refused a request for missing permission (the scopes granted to this app). "
            f"The EHR said: {exc.message}",
            403,
        )

    @app.errorhandler(FhirError)
    def fhir_error(exc: FhirError) -> tuple[str, int]:
        log.warning("FHIR request failed: %s", exc)
        return error_page("The EHR did not answer as expected", str(exc), 502)

    @app.errorhandler(RpmBillingError)
    def other_error(exc: RpmBillingError) -> tuple[str, int]:
        log.warning("request failed: %s", exc)
        status = 400 if isinstance(exc, UsageError) else 502
        return error_page("The request could not be completed", str(exc), status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        status = exc.code or 500
        if status == 400 and exc.description == "csrf":
            return error_page(
                "Form expired",
                "This form is missing its security token or it no longer matches your session. "
                "Reload the page and try again.",
                400,
            )
        return error_page(exc.name, exc.description or "", status)

    return app


def error_page(title: str, message: str, status: int) -> tuple[str, int]:
    return render_template("error.html", title=title, message=message, status=status), status


# ---------------------------------------------------------------------------------------------- serving


class _Deferred:
    """A WSGI app set after the server is bound (the port must be known before the app is configured)."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting\n"]
        return self.app(environ, start_response)


@dataclass
class RunningWebApp:
    """The web app served on loopback in a background thread. `stop()` shuts it down."""

    host: str
    port: int
    _server: BaseWSGIServer = field(repr=False)
    _deferred: _Deferred = field(repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def app(self) -> Flask | None:
        app: Flask | None = self._deferred.app
        return app

    def serve(self, app: Flask) -> None:
        """Start answering with `app` (in a daemon thread)."""
        self._deferred.app = app
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="rpm-billing-web", daemon=True
            )
            self._thread.start()

    def is_serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        self._server.shutdown() if self._thread is not None else None
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        app = self._deferred.app
        if app is not None:
            web_store = app.extensions[EXTENSION_KEY].store
            web_store.close()


def check_loopback(host: str) -> None:
    """The app listens on loopback only; put a TLS reverse proxy in front of it to publish it."""
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise UsageError(f"the web app listens on loopback (127.0.0.1) only, not {host!r}")


def bind_web_app(host: str = "127.0.0.1", port: int = 0) -> RunningWebApp:
    """Bind the listening socket on loopback (port 0: any free one) before the app exists."""
    check_loopback(host)
    deferred = _Deferred()
    try:
        server = make_server(host, port, deferred, threaded=True)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return RunningWebApp(host=host, port=server.server_port, _server=server, _deferred=deferred)


def start_web_app(config: WebConfig, host: str = "127.0.0.1", **kwargs: Any) -> RunningWebApp:
    """Create and serve the app on `host:config.port` (loopback only)."""
    running = bind_web_app(host, config.port)
    running.serve(create_app(config, **kwargs))
    log.info("rpm-billing web app serving at %s", running.origin)
    return running
