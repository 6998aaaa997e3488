"""The sandbox EHR's resource store: versioned FHIR resources in SQLite, with a search index.

One SQLite connection guarded by a re-entrant lock serves every thread of the (threaded) Flask server; a
`transaction()` holds the lock for its whole duration, so a FHIR transaction Bundle is all or nothing and
no other request sees it half done. `path` is a file name or ":memory:".

Tables: `resources` (current version of each resource, `seq` gives a stable insertion order for paging),
`versions` (every version, for vread and history) and `idx` (search-index rows, see `search.index_rows`).
"""

from __future__ import annotations

import copy
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from smart_app.sandbox import jsonio
from smart_app.sandbox import search as fsearch
from smart_app.sandbox.fhir_errors import FhirError, bad_request

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    body TEXT,
    UNIQUE (rtype, rid)
);
CREATE TABLE IF NOT EXISTS versions (
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    body TEXT,
    PRIMARY KEY (rtype, rid, version)
);
CREATE TABLE IF NOT EXISTS idx (
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    param TEXT NOT NULL,
    sys TEXT,
    val TEXT,
    lo INTEGER,
    hi INTEGER
);
CREATE INDEX IF NOT EXISTS idx_value ON idx (rtype, param, val);
CREATE INDEX IF NOT EXISTS idx_resource ON idx (rtype, rid, param);
"""


@dataclass(frozen=True)
class Version:
    """One stored version of a resource; `body` is None for a deletion."""

    type_: str
    id_: str
    version: int
    last_updated: str  # FHIR instant
    deleted: bool
    body: dict[str, Any] | None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True)
class SearchPage:
    total: int
    matches: list[dict[str, Any]]
    included: list[dict[str, Any]]
    query: fsearch.SearchQuery


def parse_etag(value: str) -> str:
    """The version id inside an ETag or If-Match value: W/"3" -> 3."""
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _now_us() -> int:
    return int(time.time() * 1000) * 1000  # milliseconds, as meta.lastUpdated shows them


class FhirStore:
    """Versioned FHIR resources of the types in `search.SUPPORTED_TYPES`, in SQLite; thread-safe.

    `timezone` is the server's zone: dates and times without an offset are read in it when indexed and
    searched (FHIR R4 search, "date"). UTC by default.
    """

    def __init__(self, path: str = ":memory:", *, timezone: str = "UTC") -> None:
        self.zone: tzinfo = ZoneInfo(timezone)
        self.timezone = timezone
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA foreign_keys = OFF")
        if path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0

    # ------------------------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[FhirStore]:
        """All the store calls inside happen together or not at all (an exception rolls all back)."""
        with self._lock:
            outermost = self._depth == 0
            if outermost:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outermost:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outermost:
                self._conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------ reads

    def lookup(self, type_: str, id_: str) -> Version | None:
        """The current version of a resource, a deletion included; None if it never existed."""
        with self._lock:
            row = self._conn.execute(
                "SELECT version, last_updated, deleted, body FROM resources WHERE rtype = ? AND rid = ?",
                (type_, id_),
            ).fetchone()
        return _version(type_, id_, row) if row else None

    def read(self, type_: str, id_: str) -> dict[str, Any] | None:
        current = self.lookup(type_, id_)
        return current.body if current and not current.deleted else None

    def lookup_version(self, type_: str, id_: str, version: str) -> Version | None:
        if not version.isdigit():
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT version, last_updated, deleted, body FROM versions WHERE rtype = ? AND rid = ? "
                "AND version = ?",
                (type_, id_, int(version)),
            ).fetchone()
        return _version(type_, id_, row) if row else None

    def vread(self, type_: str, id_: str, version: str) -> dict[str, Any] | None:
        found = self.lookup_version(type_, id_, version)
        return found.body if found and not found.deleted else None

    def history(self, type_: str, id_: str) -> list[Version]:
        """Every version of a resource, newest first (empty if it never existed)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, last_updated, deleted, body FROM versions WHERE rtype = ? AND rid = ? "
                "ORDER BY version DESC",
                (type_, id_),
            ).fetchall()
        return [_version(type_, id_, row) for row in rows]

    def count(self, type_: str | None = None) -> int:
        """Live (not deleted) resources, of one type or all."""
        sql = "SELECT COUNT(*) FROM resources WHERE deleted = 0"
        args: tuple[str, ...] = ()
        if type_ is not None:
            sql += " AND rtype = ?"
            args = (type_,)
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])

    def search(
        self, type_: str, params: Iterable[tuple[str, str]], *, patient: str | None = None
    ) -> SearchPage:
        """One page of a search. `patient` restricts matches and includes to that patient's compartment.

        Raises FhirError (400) for a parameter, modifier, prefix or value the sandbox does not support.
        """
        return self.run_query(self.parse_query(type_, params), patient=patient)

    def parse_query(self, type_: str, params: Iterable[tuple[str, str]]) -> fsearch.SearchQuery:
        """Check and parse search parameters (dates without an offset in the store's zone)."""
        _check_served(type_)
        return fsearch.parse_query(type_, params, self.zone)

    def run_query(self, query: fsearch.SearchQuery, *, patient: str | None = None) -> SearchPage:
        where, args = fsearch.where_clause(query, patient)
        order, order_args = fsearch.order_clause(query)
        count_sql = f"SELECT COUNT(*) FROM resources r WHERE {where}"
        with self._lock:
            if query.summary_count or query.count == 0:
                total = int(self._conn.execute(count_sql, args).fetchone()[0])
                return SearchPage(total, [], [], query)
            rows = self._conn.execute(
                f"SELECT r.body FROM resources r WHERE {where} {order} LIMIT ? OFFSET ?",
                [*args, *order_args, query.count, query.offset],
            ).fetchall()
            if 0 < len(rows) < query.count or (not rows and query.offset == 0):
                total = query.offset + len(rows)  # the last page: no need to count
            else:
                total = int(self._conn.execute(count_sql, args).fetchone()[0])
            if query.include:  # the included resources are read in the same state as the matches
                matches = [jsonio.loads(row[0]) for row in rows]
                return SearchPage(total, matches, self._includes(query, matches, patient), query)
        # Parsed without the lock: other requests need not wait for it.
        return SearchPage(total, [jsonio.loads(row[0]) for row in rows], [], query)

    def list_resources(self, type_: str, limit: int) -> list[dict[str, Any]]:
        """The first `limit` live resources of a type, in the order they were first stored."""
        return self.run_query(fsearch.SearchQuery(type_, (), count=max(0, limit) or 1)).matches[
            : max(0, limit)
        ]

    def _includes(
        self, query: fsearch.SearchQuery, matches: list[dict[str, Any]], patient: str | None
    ) -> list[dict[str, Any]]:
        included: dict[tuple[str, str], dict[str, Any]] = {}
        for name in query.include:
            path, target = fsearch.INCLUDES[name]
            for resource in matches:
                for target_id in fsearch.references(resource, path, target):
                    if (target, target_id) in included:
                        continue
                    found = self.read(target, target_id)
                    if found and (patient is None or patient in fsearch.compartment_patients(found)):
                        included[(target, target_id)] = found
        return list(included.values())

    # ------------------------------------------------------------------------------------ writes

    def create(self, resource: dict[str, Any], *, id_: str | None = None) -> dict[str, Any]:
        """Store a new resource under a new id (or `id_`, chosen by the caller, e.g. a transaction).

        Any id in `resource` is ignored, as FHIR create requires. Returns the stored copy, with
        `meta.versionId` "1" and `meta.lastUpdated`.
        """
        type_ = _type_of(resource)
        new_id = id_ or str(uuid.uuid4())
        with self.transaction():
            try:
                return self._put(type_, new_id, resource, previous=None)
            except sqlite3.IntegrityError:  # UNIQUE (rtype, rid): a resource had this id, deleted or not
                raise FhirError(409, "duplicate", f"{type_}/{new_id} already exists") from None

    def update(self, resource: dict[str, Any], if_match: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store a new version of `resource` (by its id); create it if absent or deleted.

        `if_match` (an ETag such as W/"2") must name the current version, else 412. Returns the stored copy
        and whether it was created.
        """
        type_ = _type_of(resource)
        id_ = resource.get("id")
        if not isinstance(id_, str) or not fsearch.valid_id(id_):
            raise bad_request(f"{type_} update needs a valid id in the resource, got {id_!r}")
        with self.transaction():
            current = self.lookup(type_, id_)
            if if_match is not None:
                wanted = parse_etag(if_match)
                if current is None or current.deleted or str(current.version) != wanted:
                    have = "no current version" if current is None or current.deleted else current.etag
                    raise FhirError(
                        412, "conflict", f"If-Match {if_match} does not match {type_}/{id_} ({have})"
                    )
            stored = self._put(type_, id_, resource, previous=current)
        return stored, current is None or current.deleted

    def delete(self, type_: str, id_: str) -> bool:
        """Delete a resource (a new, deleted version). False if it did not exist or was already deleted."""
        with self.transaction():
            current = self.lookup(type_, id_)
            if current is None or current.deleted:
                return False
            now = _now_us()
            version = current.version + 1
            self._conn.execute(
                "UPDATE resources SET version = ?, last_updated = ?, deleted = 1, body = NULL "
                "WHERE rtype = ? AND rid = ?",
                (version, now, type_, id_),
            )
            self._conn.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, 1, NULL)", (type_, id_, version, now)
            )
            self._conn.execute("DELETE FROM idx WHERE rtype = ? AND rid = ?", (type_, id_))
        return True

    def load(self, resources: Iterable[dict[str, Any]]) -> int:
        """Bulk load (synthetic data), keeping the given ids (a missing id gets a new one).

        A resource already stored gets a new version. Items that are not resources of a supported type,
        or whose id is invalid, are logged and skipped. Returns how many were stored.
        """
        loaded = 0
        with self.transaction():
            for position, resource in enumerate(resources):
                type_ = resource.get("resourceType") if isinstance(resource, dict) else None
                if type_ not in fsearch.SEARCH_PARAMS:
                    log.warning("load: item %d skipped: resourceType %r is not served", position, type_)
                    continue
                id_ = resource.get("id") or str(uuid.uuid4())
                if not isinstance(id_, str) or not fsearch.valid_id(id_):
                    log.warning("load: item %d (%s) skipped: invalid id %r", position, type_, id_)
                    continue
                self._put(str(type_), id_, resource, previous=self.lookup(str(type_), id_))
                loaded += 1
        return loaded

    def _put(
        self, type_: str, id_: str, resource: dict[str, Any], previous: Version | None
    ) -> dict[str, Any]:
        now = _now_us()
        version = previous.version + 1 if previous else 1
        stored = copy.deepcopy(resource)
        stored["id"] = id_
        meta = stored.get("meta")
        stored["meta"] = {
            **(meta if isinstance(meta, dict) else {}),
            "versionId": str(version),
            "lastUpdated": fsearch.instant_text(now),
        }
        body = jsonio.dumps_text(stored)
        if previous is None:
            self._conn.execute(
                "INSERT INTO resources (rtype, rid, version, last_updated, deleted, body) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                (type_, id_, version, now, body),
            )
        else:
            self._conn.execute(
                "UPDATE resources SET version = ?, last_updated = ?, deleted = 0, body = ? WHERE rtype = ? "
                "AND rid = ?",
                (version, now, body, type_, id_),
            )
            self._conn.execute("DELETE FROM idx WHERE rtype = ? AND rid = ?", (type_, id_))
        self._conn.execute("INSERT INTO versions VALUES (?, ?, ?, ?, 0, ?)", (type_, id_, version, now, body))
        self._conn.executemany(
            "INSERT INTO idx VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (type_, id_, r.param, r.system, r.value, r.lo, r.hi)
                for r in fsearch.index_rows(stored, self.zone)
            ],
        )
        return stored

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _type_of(resource: dict[str, Any]) -> str:
    type_ = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(type_, str):
        raise bad_request("the body is not a FHIR resource (no resourceType)")
    _check_served(type_)
    return type_


def _check_served(type_: str) -> None:
    if type_ not in fsearch.SEARCH_PARAMS:
        raise FhirError(400, "not-supported", f"resource type {type_} is not served by this sandbox")


def _version(type_: str, id_: str, row: tuple[Any, ...]) -> Version:
    version, last_updated, deleted, body = row
    return Version(
        type_,
        id_,
        int(version),
        fsearch.instant_text(last_updated),
        bool(deleted),
        jsonio.loads(body) if body else None,
    )
