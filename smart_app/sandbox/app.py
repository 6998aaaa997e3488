"""The sandbox EHR as one Flask app: FHIR R4 server at /fhir + SMART authorization server + EHR launch page.

`create_app(config)` wires the pieces; `start_sandbox(config)` serves the app on a loopback port in a
background thread (port 0 = any free port), for the `rpm-billing sandbox` command and for tests.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Flask, redirect
from werkzeug.serving import BaseWSGIServer

from smart_app.errors import RpmBillingError, UsageError
from smart_app.sandbox.auth_server import (
    EHR_PATH,
    FHIR_PATH,
    AuthSettings,
    Person,
    SandboxAuthorizationServer,
    SandboxUrls,
    create_auth_blueprint,
)
from smart_app.sandbox.clients import DEFAULT_APP_LAUNCH_URL, load_clients
from smart_app.sandbox.http_server import KeepAliveWSGIServer
from smart_app.sandbox.keys import BackendKeys, load_or_create_backend_keys, load_or_create_signing_key
from smart_app.sandbox.tokens import TokenStore

log = logging.getLogger(__name__)

EXTENSION_KEY = "rpm_billing_sandbox"
DEFAULT_PRACTITIONER = {
    "resourceType": "Practitioner",
    "id": "sandbox-practitioner",
    "active": True,
    "name": [{"family": "Sandbox", "given": ["Sam"], "prefix": ["Dr."]}],
}


class SandboxError(RpmBillingError):
    """The sandbox cannot start because a part of the installation is missing."""


@dataclass(frozen=True)
class SandboxConfig:
    host: str = "127.0.0.1"  # loopback only; anything else is refused
    port: int = 0  # 0: any free port (start_sandbox reports the one it got)
    patients: int = 0  # synthetic patients to load (0: none)
    seed: int = 1
    month: str | None = None  # YYYY-MM of the synthetic data; default: the current month in `timezone`
    timezone: str = "America/New_York"
    db_path: str = ":memory:"  # SQLite file of the FHIR store, or in memory
    clients_file: Path | None = None  # JSON of extra clients (see clients.py)
    auto_approve: bool = False  # skip the approve page (tests); a needed patient is the first one listed
    app_launch_url: str = DEFAULT_APP_LAUNCH_URL
    app_redirect_uris: tuple[str, ...] = ()  # default: <launch URL origin>/callback
    key_dir: Path | None = None  # where the keys are kept (None: in memory, new on each start)
    base_url: str | None = None  # origin to publish (default http://<host>:<port>)
    require_auth: bool = True  # the FHIR server demands bearer tokens
    auth: AuthSettings = field(default_factory=AuthSettings)  # token lifetimes etc.

    def resolved_month(self) -> str:
        if self.month is not None:
            try:
                datetime.strptime(self.month, "%Y-%m")
            except ValueError:
                raise UsageError(f"month must be YYYY-MM, not {self.month!r}") from None
            return self.month
        try:
            return datetime.now(ZoneInfo(self.timezone)).strftime("%Y-%m")
        except ZoneInfoNotFoundError:
            raise UsageError(f"unknown time zone {self.timezone!r}") from None


def check_loopback(host: str) -> None:
    """The sandbox never listens beyond this machine."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise UsageError(f"the sandbox only listens on loopback (127.0.0.1), not {host!r}")


class StoreDirectory:
    """The people of the FHIR store as the authorization server sees them (launch page, picker, checks)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def _people(self, type_: str, limit: int) -> list[Person]:
        page = self._store.search(type_, [("_count", str(limit))])
        return [Person(f"{type_}/{r['id']}", display_name(r)) for r in page.matches if r.get("id")]

    def patients(self, limit: int) -> list[Person]:
        return self._people("Patient", limit)

    def practitioners(self, limit: int) -> list[Person]:
        return self._people("Practitioner", limit)

    def exists(self, reference: str) -> bool:
        type_, _, id_ = reference.partition("/")
        if not type_ or not id_ or "/" in id_:
            return False
        return self._store.read(type_, id_) is not None


def display_name(resource: dict[str, Any]) -> str:
    """A person's display name from `name[0]` (prefix given family), else their id."""
    names = resource.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"])
        parts = [p for key in ("prefix", "given") for p in name.get(key) or [] if isinstance(p, str)]
        if isinstance(name.get("family"), str):
            parts.append(name["family"])
        if parts:
            return " ".join(parts)
    return str(resource.get("id", "?"))


@dataclass(frozen=True)
class SandboxState:
    """What a running sandbox is made of (for the command's summary and for tests)."""

    config: SandboxConfig
    store: Any  # FhirStore
    tokens: TokenStore
    auth: SandboxAuthorizationServer
    backend_keys: BackendKeys
    loaded: dict[str, int]  # resources loaded per type


def sandbox_state(app: Flask) -> SandboxState:
    state: SandboxState = app.extensions[EXTENSION_KEY]
    return state


def configure_urls(app: Flask, origin: str) -> SandboxUrls:
    """Publish the sandbox's absolute URLs (the FHIR server's CapabilityStatement reads these keys)."""
    urls = SandboxUrls(origin.rstrip("/"))
    app.config.update(
        SANDBOX_BASE_URL=urls.origin,
        SANDBOX_FHIR_BASE=urls.fhir_base,
        SANDBOX_AUTHORIZE_URL=urls.authorize,
        SANDBOX_TOKEN_URL=urls.token,
        SANDBOX_INTROSPECT_URL=urls.introspect,
        SANDBOX_JWKS_URL=urls.jwks,
    )
    return urls


def _counting(resources: Iterable[dict[str, Any]], counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    for resource in resources:
        type_ = str(resource.get("resourceType", "?"))
        counts[type_] = counts.get(type_, 0) + 1
        yield resource


def load_population(store: Any, config: SandboxConfig) -> dict[str, int]:
    """Load `config.patients` synthetic patients (smart_app.synth) into the store; counts per type."""
    counts: dict[str, int] = {}
    if config.patients > 0:
        try:
            from smart_app.synth import generate
        except ModuleNotFoundError as exc:
            raise SandboxError(
                "the synthetic population generator (smart_app.synth) is not available; use --patients 0"
            ) from exc
        try:
            resources = generate(config.patients, config.resolved_month(), config.seed, config.timezone)
        except ValueError as exc:  # the generator checks its arguments up front
            raise UsageError(f"cannot generate the synthetic population: {exc}") from exc
        store.load(_counting(resources, counts))
    if not store.count("Practitioner"):
        # Someone must be signed in to the EHR: fhirUser of launches and of id_tokens.
        store.load(_counting([dict(DEFAULT_PRACTITIONER)], counts))
    return {type_: store.count(type_) for type_ in sorted(counts)}  # what the store kept


def create_app(config: SandboxConfig) -> Flask:
    """The whole sandbox EHR as a Flask app (not yet serving)."""
    from smart_app.sandbox.fhir_server import create_fhir_blueprint
    from smart_app.sandbox.store import FhirStore

    check_loopback(config.host)
    try:
        ZoneInfo(config.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {config.timezone!r} (use an IANA name)") from None
    if config.patients < 0:
        raise UsageError("the number of patients cannot be negative")
    signing_key = load_or_create_signing_key(config.key_dir)
    backend_keys = load_or_create_backend_keys(config.key_dir)
    clients = load_clients(
        config.clients_file,
        app_launch_url=config.app_launch_url,
        app_redirect_uris=config.app_redirect_uris,
        backend_jwks=backend_keys.public_jwks(),
    )
    store = FhirStore(config.db_path, timezone=config.timezone)
    loaded = load_population(store, config)
    tokens = TokenStore()
    auth = SandboxAuthorizationServer(
        clients=clients,
        tokens=tokens,
        signing_key=signing_key,
        directory=StoreDirectory(store),
        settings=replace(config.auth, auto_approve=config.auto_approve or config.auth.auto_approve),
    )

    app = Flask(__name__)
    app.config["JSON_SORT_KEYS"] = False
    if config.base_url:
        configure_urls(app, config.base_url)
    elif config.port:
        configure_urls(app, f"http://{config.host}:{config.port}")
    # With port 0 the URLs are published by start_sandbox once the port is known; until then (Flask test
    # client) they follow the request's own root.
    app.register_blueprint(
        create_fhir_blueprint(store, tokens, require_auth=config.require_auth), url_prefix=FHIR_PATH
    )
    app.register_blueprint(create_auth_blueprint(auth))

    @app.get("/")
    def index() -> Any:
        return redirect(EHR_PATH)

    app.extensions[EXTENSION_KEY] = SandboxState(config, store, tokens, auth, backend_keys, loaded)
    return app


@dataclass
class RunningSandbox:
    """A sandbox served on loopback in a background thread. `stop()` shuts it down."""

    app: Flask
    urls: SandboxUrls
    _server: BaseWSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def fhir_base(self) -> str:
        return self.urls.fhir_base

    @property
    def base_url(self) -> str:
        return self.urls.origin

    @property
    def state(self) -> SandboxState:
        return sandbox_state(self.app)

    def is_serving(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sandbox(config: SandboxConfig) -> RunningSandbox:
    """Create the app and serve it on `config.host:config.port` (0: a free port) in a daemon thread."""
    app = create_app(config)
    try:
        server = KeepAliveWSGIServer(config.host, config.port, app)
    except OSError as exc:
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc
    origin = config.base_url or f"http://{config.host}:{server.server_port}"
    urls = configure_urls(app, origin)
    # Starting leaves much garbage (the synthetic population was generated in Python) and many new objects
    # (the FHIR models imported to validate): the first full collection, ~60 ms during which the server
    # answers nothing, would come while serving. It comes now.
    gc.collect()
    thread = threading.Thread(target=server.serve_forever, name="rpm-billing-sandbox", daemon=True)
    thread.start()
    log.info("sandbox EHR serving at %s", urls.origin)
    return RunningSandbox(app=app, urls=urls, _server=server, _thread=thread)
