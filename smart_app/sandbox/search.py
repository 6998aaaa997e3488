"""Search in the sandbox FHIR server: supported parameters, how resources are indexed, the SQL of a query.

The sandbox supports exactly the search parameters the product uses (see `SEARCH_PARAMS`); any other
parameter, modifier, prefix or `_include` is refused with a 400 that names it, never silently ignored.

Dates are compared as instants (epoch microseconds). Every date or dateTime, in a resource or in a search
value, is an implicit range given by its precision (`2025-01` is the whole month, `2025-01-10T10:00:00Z` one
second). A value without an offset, and every date without a time, is read in the server's time zone (FHIR R4
search, "date": "the server's local time zone should be assumed"); the sandbox's zone is a setting of the
store, UTC by default, as the reference server reads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from smart_app.sandbox.fhir_errors import bad_request, not_supported

MIN_TIME = -(2**62)  # open start of a Period
MAX_TIME = 2**62  # open end of a Period

COMPARTMENT = "~patient"  # index key of a resource's patient compartment (never a client-visible parameter)


@dataclass(frozen=True)
class SearchParam:
    """One supported search parameter: a name, a kind and the element paths it indexes.

    `paths` are dotted paths with choice types spelled out (`effectiveDateTime`); `targets` limits a reference
    parameter to some resource types (`patient` is `subject` where it is a Patient).
    """

    name: str
    kind: str  # "token" | "reference" | "date"
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()


def _token(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "token", paths or (name,))


def _ref(name: str, path: str, *targets: str) -> SearchParam:
    return SearchParam(name, "reference", (path,), targets)


def _date(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "date", paths)


def _params(*params: SearchParam) -> dict[str, SearchParam]:
    return {p.name: p for p in params}


_IDENTIFIER = _token("identifier")
_STATUS = _token("status")

# Resource types the sandbox stores and serves, with the search parameters the product uses on each (R4
# definitions; `_id` and `_lastUpdated` work on all of them).
SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {
    "Patient": _params(_IDENTIFIER),
    "Practitioner": _params(_IDENTIFIER),
    "PractitionerRole": _params(_IDENTIFIER, _ref("practitioner", "practitioner", "Practitioner")),
    "Organization": _params(_IDENTIFIER),
    "RelatedPerson": _params(_IDENTIFIER, _ref("patient", "patient", "Patient")),
    "Device": _params(_IDENTIFIER, _ref("patient", "patient", "Patient"), _STATUS, _token("type")),
    "Consent": _params(_IDENTIFIER, _ref("patient", "patient", "Patient"), _STATUS, _token("category")),
    "Observation": _params(
        _IDENTIFIER,
        _ref("patient", "subject", "Patient"),
        _ref("subject", "subject"),
        _date("date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _token("code"),
        _STATUS,
        _token("category"),
        _ref("device", "device"),
    ),
    "Communication": _params(
        _IDENTIFIER,
        _ref("patient", "subject", "Patient"),
        _ref("subject", "subject"),
        _date("sent", "sent"),
        _STATUS,
        _token("category"),
        _ref("encounter", "encounter", "Encounter"),
    ),
    "Encounter": _params(
        _IDENTIFIER,
        _ref("patient", "subject", "Patient"),
        _ref("subject", "subject"),
        _date("date", "period"),
        _STATUS,
    ),
    "ChargeItem": _params(
        _IDENTIFIER, _ref("patient", "subject", "Patient"), _ref("subject", "subject"), _token("code")
    ),
    "DocumentReference": _params(
        _IDENTIFIER,
        _ref("patient", "subject", "Patient"),
        _ref("subject", "subject"),
        _STATUS,
        _token("type"),
    ),
    "Group": _params(_IDENTIFIER, _ref("member", "member.entity")),
}
SUPPORTED_TYPES = tuple(SEARCH_PARAMS)

# `_include` values supported, as (type, parameter) -> reference path and target type.
INCLUDES: dict[str, tuple[str, str]] = {"Communication:encounter": ("encounter", "Encounter")}

# The patient compartment as the sandbox draws it (R4 CompartmentDefinition/patient, plus Device by its
# `patient`, which a patient-context app needs to read its own devices). Paths to Patient references.
PATIENT_COMPARTMENT: dict[str, tuple[str, ...]] = {
    "Observation": ("subject", "performer"),
    "Communication": ("subject", "sender", "recipient"),
    "Consent": ("patient",),
    "Device": ("patient",),
    "Encounter": ("subject",),
    "ChargeItem": ("subject",),
    "DocumentReference": ("subject", "author"),
    "Group": ("member.entity",),
    "RelatedPerson": ("patient",),
}
# Types outside any patient's compartment: shared reference data (who the staff are), readable with a
# patient-context token that names the type, never writable with one.
SHARED_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization"})

# Result parameters the sandbox understands; `_format` and `_pretty` are accepted and ignored (JSON only).
RESULT_PARAMS = frozenset({"_count", "_offset", "_sort", "_include", "_summary", "_format", "_pretty"})
DEFAULT_COUNT = 20
MAX_COUNT = 1000

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
# A dateTime with a time but no offset: invalid FHIR, yet found in EHR data (read in the server's zone).
OFFSETLESS_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def valid_id(id_: str) -> bool:
    return bool(_ID_RE.match(id_))


# ---------------------------------------------------------------------------------------------- dates


def _epoch_us(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def date_range(value: str, zone: tzinfo) -> tuple[int, int] | None:
    """The half-open instant range [lo, hi) in epoch microseconds a FHIR date/dateTime/instant stands for.

    None when the value is not a FHIR date. Without an offset the value is read in `zone`.
    """
    m = _DATE_RE.match(value)
    if not m:
        return None
    g = m.groupdict()
    try:
        zone_of_value: tzinfo = zone
        if g["tz"] == "Z":
            zone_of_value = UTC
        elif g["tz"]:
            sign = 1 if g["tz"][0] == "+" else -1
            hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
            zone_of_value = _fixed_offset(sign * (hours * 60 + minutes))
        year = int(g["y"])
        if g["m"] is None:
            start = datetime(year, 1, 1, tzinfo=zone_of_value)
            end = _next(lambda: datetime(year + 1, 1, 1, tzinfo=zone_of_value))
        elif g["d"] is None:
            month = int(g["m"])
            start = datetime(year, month, 1, tzinfo=zone_of_value)
            end = _next(
                lambda: datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone_of_value),
            )
        elif g["H"] is None:
            start = datetime(year, int(g["m"]), int(g["d"]), tzinfo=zone_of_value)
            end = _next(lambda: _local_next_day(start, zone_of_value))
        else:
            second = int(g["S"] or 0)
            micro = int((g["f"] or ".0")[1:7].ljust(6, "0"))
            start = datetime(
                year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), second, micro, tzinfo=zone_of_value
            )
            if g["S"] is None:
                step = timedelta(minutes=1)
            elif g["f"] is None:
                step = timedelta(seconds=1)
            else:
                step = timedelta(microseconds=10 ** max(0, 6 - (len(g["f"]) - 1)))
            return _epoch_us(start), _epoch_us(start) + _us(step)
    except ValueError:  # month 13, day 32, hour 25...
        return None
    return _epoch_us(start), (MAX_TIME if end is None else _epoch_us(end))


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _next(make: Any) -> datetime | None:
    try:
        result: datetime = make()
    except (ValueError, OverflowError):  # past year 9999
        return None
    return result


def _local_next_day(start: datetime, zone: tzinfo) -> datetime:
    # Wall-clock arithmetic: the next local midnight, whatever the day's length (DST changes).
    return (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)


def _fixed_offset(minutes: int) -> tzinfo:
    return timezone(timedelta(minutes=minutes))


def instant_text(epoch_us: int) -> str:
    """An instant as FHIR `instant` text in UTC with milliseconds (meta.lastUpdated)."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------------- indexing


@dataclass(frozen=True)
class IndexRow:
    param: str
    system: str | None  # token system, or the reference's resource type
    value: str | None  # token code/value, or the reference's id
    lo: int | None = None  # date range, epoch microseconds
    hi: int | None = None


def walk(node: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted path, lists flattened."""
    current = [node]
    for part in path.split("."):
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict) and part in item:
                value = item[part]
                found.extend(value if isinstance(value, list) else [value])
        current = found
    yield from current


def parse_reference(reference: Any) -> tuple[str, str] | None:
    """("Patient", "123") from "Patient/123", an absolute URL or a versioned reference; None otherwise."""
    if not isinstance(reference, str):
        return None
    m = _REF_RE.search(reference)
    return (m.group(1), m.group(2)) if m else None


def _tokens(value: Any) -> Iterator[tuple[str | None, str | None]]:
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if isinstance(value.get("coding"), list):  # CodeableConcept
            for coding in value["coding"]:
                yield from _tokens(coding)
        elif isinstance(value.get("code"), str):  # Coding
            yield _str_or_none(value.get("system")), value["code"]
        elif isinstance(value.get("value"), str):  # Identifier
            yield _str_or_none(value.get("system")), value["value"]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _date_ranges(value: Any, zone: tzinfo) -> Iterator[tuple[int, int]]:
    if isinstance(value, str):
        rng = date_range(value, zone)
        if rng:
            yield rng
    elif isinstance(value, dict):  # Period: open ends stretch to the end of time
        start = date_range(value["start"], zone) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"], zone) if isinstance(value.get("end"), str) else None
        if ("start" in value and start is None) or ("end" in value and end is None):
            return  # a malformed bound: not indexed rather than indexed wrongly
        yield (start[0] if start else MIN_TIME), (end[1] if end else MAX_TIME)


def index_rows(resource: dict[str, Any], zone: tzinfo) -> list[IndexRow]:
    """The search-index rows of a resource: one per indexed value, plus its patient compartment."""
    type_ = resource["resourceType"]
    rows: list[IndexRow] = []
    for param in SEARCH_PARAMS.get(type_, {}).values():
        for path in param.paths:
            for value in walk(resource, path):
                if param.kind == "token":
                    rows.extend(IndexRow(param.name, s, v) for s, v in _tokens(value) if v)
                elif param.kind == "reference":
                    ref = _reference_of(value)
                    if ref and (not param.targets or ref[0] in param.targets):
                        rows.append(IndexRow(param.name, ref[0], ref[1]))
                else:
                    rows.extend(
                        IndexRow(param.name, None, None, lo, hi) for lo, hi in _date_ranges(value, zone)
                    )
    rows.extend(IndexRow(COMPARTMENT, "Patient", pid) for pid in compartment_patients(resource))
    return rows


def compartment_patients(resource: dict[str, Any]) -> set[str]:
    """Ids of the patients whose compartment holds this resource (a Patient is in its own)."""
    type_ = resource.get("resourceType")
    if type_ == "Patient":
        return {resource["id"]} if isinstance(resource.get("id"), str) else set()
    return {
        id_
        for path in PATIENT_COMPARTMENT.get(str(type_), ())
        for id_ in references(resource, path, "Patient")
    }


def references(resource: dict[str, Any], path: str, target: str) -> Iterator[str]:
    """Ids of the `target` resources referenced at `path`."""
    for value in walk(resource, path):
        ref = _reference_of(value)
        if ref and ref[0] == target:
            yield ref[1]


def _reference_of(value: Any) -> tuple[str, str] | None:
    """(type, id) of a Reference element, None if it is not one to a resource by type and id."""
    return parse_reference(value.get("reference")) if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Clause:
    """One search parameter occurrence: its alternatives (comma-separated values) are OR'd."""

    name: str
    kind: str  # token | reference | date | id | lastUpdated
    alternatives: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class SearchQuery:
    type_: str
    clauses: tuple[Clause, ...]
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: tuple[tuple[str, bool], ...] = ()  # (key, descending)
    include: tuple[str, ...] = ()
    summary_count: bool = False


def _split(value: str, sep: str) -> list[str]:
    """Split on `sep` where it is not escaped with a backslash (FHIR search escaping); escapes are kept."""
    if "\\" not in value:
        return value.split(sep)  # nothing escaped (the usual case)
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", value)


def _token_alternative(raw: str, name: str) -> tuple[str | None, str | None]:
    """(system, code): system None = any system, "" = no system; code None = any code in the system.

    The system ends at the first unescaped '|'; the rest is the code, so an identifier value holding '|'
    (the product's charge keys: `patient|code|date`) matches whether the client escaped its pipes (`\\|`,
    as FHIR asks) or not (as HAPI FHIR also reads it).
    """
    parts = _split(raw, "|")
    if len(parts) == 1:
        return None, _unescape(parts[0])
    system, code = _unescape(parts[0]), _unescape("|".join(parts[1:]))
    if not code and not system:
        raise bad_request(f"search parameter '{name}': '{raw}' names neither a system nor a code")
    return system, (code or None)


def _reference_alternative(raw: str, param: SearchParam, type_modifier: str | None) -> tuple[str | None, str]:
    if "/" in raw:
        ref = parse_reference(raw)
        if not ref:
            raise bad_request(f"search parameter '{param.name}': '{raw}' is not a reference (Type/id)")
        if type_modifier and ref[0] != type_modifier:
            raise bad_request(f"search parameter '{param.name}:{type_modifier}': '{raw}' is another type")
        return ref
    if not valid_id(raw):
        raise bad_request(f"search parameter '{param.name}': '{raw}' is not a resource id")
    if type_modifier:
        return type_modifier, raw
    if len(param.targets) == 1:
        return param.targets[0], raw
    return None, raw  # a bare id on a multi-type reference: any type with that id


def _date_alternative(raw: str, name: str, zone: tzinfo) -> tuple[str, int, int]:
    prefix = raw[:2] if raw[:2].isalpha() else "eq"
    text = raw[2:] if raw[:2].isalpha() else raw
    if prefix not in _DATE_PREFIXES:
        raise not_supported(
            f"search parameter '{name}': prefix '{prefix}' is not supported (use one of "
            f"{', '.join(_DATE_PREFIXES)})"
        )
    # A '+' offset sent unencoded in a URL arrives as a space: read it as the '+' the client meant.
    text = re.sub(r" (\d{2}:\d{2})$", r"+\1", text)
    rng = date_range(text, zone)
    if rng is None:
        raise bad_request(f"search parameter '{name}': '{raw}' is not a FHIR date or dateTime")
    return prefix, rng[0], rng[1]


def _int_param(name: str, raw: str, lo: int, hi: int) -> int:
    if not raw.isdigit():
        raise bad_request(f"'{name}' must be a whole number, not '{raw}'")
    return max(lo, min(int(raw), hi))


def parse_query(type_: str, params: Iterable[tuple[str, str]], zone: tzinfo) -> SearchQuery:
    """Check and parse a search's parameters; a 400 naming the first one the sandbox does not support."""
    known = SEARCH_PARAMS[type_]
    clauses: list[Clause] = []
    count, offset, summary_count = DEFAULT_COUNT, 0, False
    sort: list[tuple[str, bool]] = []
    include: list[str] = []
    for key, raw in params:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS and not modifier:
            if name == "_count":
                count = _int_param(name, raw, 0, MAX_COUNT)
            elif name == "_offset":
                offset = _int_param(name, raw, 0, 2**31)
            elif name == "_summary":
                if raw != "count":
                    raise not_supported(f"_summary={raw} is not supported (only _summary=count)")
                summary_count = True
            elif name == "_include":
                if raw not in INCLUDES or not raw.startswith(type_ + ":"):
                    raise not_supported(
                        f"_include={raw} is not supported on {type_} "
                        f"(supported: {', '.join(INCLUDES) or 'none'})"
                    )
                include.append(raw)
            elif name == "_sort":
                sort.extend(_sort_keys(type_, raw))
            continue  # _format, _pretty: JSON is all the sandbox speaks
        if "." in name:
            raise not_supported(f"chained search parameter '{key}' is not supported")
        if name == "_id" and not modifier:
            if raw:  # FHIR: a parameter without a value is ignored
                clauses.append(Clause("_id", "id", tuple((_unescape(v),) for v in _split(raw, ","))))
            continue
        if name == "_lastUpdated" and not modifier:
            if raw:
                alts = tuple(_date_alternative(_unescape(v), name, zone) for v in _split(raw, ","))
                clauses.append(Clause(name, "lastUpdated", alts))
            continue
        param = known.get(name)
        if param is None:
            raise not_supported(
                f"search parameter '{name}' is not supported on {type_} by this sandbox "
                f"(supported: {', '.join(['_id', '_lastUpdated', *known])})"
            )
        type_modifier = None
        if modifier:
            if param.kind == "reference" and modifier in (param.targets or SEARCH_PARAMS):
                type_modifier = modifier
            else:
                raise not_supported(f"modifier ':{modifier}' on '{name}' is not supported by this sandbox")
        if not raw:
            continue  # the name is supported; without a value it is ignored (FHIR search)
        values = _split(raw, ",")
        if param.kind == "token":
            alternatives: tuple[tuple[Any, ...], ...] = tuple(_token_alternative(v, name) for v in values)
        elif param.kind == "reference":
            alternatives = tuple(_reference_alternative(_unescape(v), param, type_modifier) for v in values)
        else:
            alternatives = tuple(_date_alternative(_unescape(v), name, zone) for v in values)
        clauses.append(Clause(name, param.kind, alternatives))
    return SearchQuery(type_, tuple(clauses), count, offset, tuple(sort), tuple(include), summary_count)


def _sort_keys(type_: str, raw: str) -> Iterator[tuple[str, bool]]:
    for item in raw.split(","):
        descending = item.startswith("-")
        key = item.lstrip("-")
        param = SEARCH_PARAMS[type_].get(key)
        if key not in ("_id", "_lastUpdated") and not (param and param.kind == "date"):
            raise not_supported(
                f"_sort={item} is not supported (sort by _id, _lastUpdated or a date parameter)"
            )
        yield key, descending


# ---------------------------------------------------------------------------------------------- SQL

_DATE_SQL = {
    # Target range [lo, hi) against search range [sl, sh), FHIR R4 search prefixes.
    "eq": "(lo >= ? AND hi <= ?)",  # the search range fully contains the target
    "ne": "NOT (lo >= ? AND hi <= ?)",
    "gt": "(hi > ?)",  # some of the target lies after the search range
    "lt": "(lo < ?)",  # some of the target lies before the search range
    "ge": "(hi > ?)",  # some of the target lies at or after the start of the search range
    "le": "(lo < ?)",  # some of the target lies before the end of the search range
    "sa": "(lo >= ?)",  # the target starts after the search range
    "eb": "(hi <= ?)",  # the target ends before the search range
}
_DATE_ARGS = {
    "eq": lambda sl, sh: (sl, sh),
    "ne": lambda sl, sh: (sl, sh),
    "gt": lambda sl, sh: (sh,),
    "lt": lambda sl, sh: (sl,),
    "ge": lambda sl, sh: (sl,),
    "le": lambda sl, sh: (sh,),
    "sa": lambda sl, sh: (sh,),
    "eb": lambda sl, sh: (sl,),
}


def _date_condition(alt: tuple[str, int, int], lo: str, hi: str) -> tuple[str, list[Any]]:
    prefix, sl, sh = alt
    sql = _DATE_SQL[prefix].replace("lo", lo).replace("hi", hi)
    return sql, list(_DATE_ARGS[prefix](sl, sh))


# Token and reference clauses are uncorrelated subqueries (the type is a bound value, not r.rtype): SQLite
# runs each once through idx_value and looks the few matching resources up by id.
_IDX_SELECT = "SELECT rid FROM idx WHERE rtype = ? AND param = ?"
_IDX_OF_RESOURCE = "SELECT 1 FROM idx WHERE rtype = r.rtype AND rid = r.rid AND param = ?"


def where_clause(query: SearchQuery, patient: str | None) -> tuple[str, list[Any]]:
    """SQL conditions on `resources r` for a query, restricted to one patient's compartment if given."""
    sql = ["r.rtype = ?", "r.deleted = 0"]
    args: list[Any] = [query.type_]
    for clause in query.clauses:
        if clause.kind == "id":
            sql.append(f"r.rid IN ({', '.join('?' for _ in clause.alternatives)})")
            args.extend(alt[0] for alt in clause.alternatives)
            continue
        if clause.kind == "lastUpdated":
            parts = [
                _date_condition(alt, "r.last_updated", "(r.last_updated + 1000)")
                for alt in clause.alternatives
            ]
            sql.append("(" + " OR ".join(p for p, _ in parts) + ")")
            args.extend(a for _, part_args in parts for a in part_args)
            continue
        conditions: list[str] = []
        condition_args: list[Any] = []
        for alt in clause.alternatives:
            condition, one_args = (
                _date_condition(alt, "lo", "hi") if clause.kind == "date" else _token_condition(alt)
            )
            conditions.append(condition)
            condition_args.extend(one_args)
        if clause.kind == "date":
            # Date ranges select poorly (half of all readings are "after" a date): test them per candidate.
            sql.append(f"EXISTS ({_IDX_OF_RESOURCE} AND ({' OR '.join(conditions)}))")
            args.extend([clause.name, *condition_args])
        else:
            sql.append(f"r.rid IN ({_IDX_SELECT} AND ({' OR '.join(conditions)}))")
            args.extend([query.type_, clause.name, *condition_args])
    if patient is not None:
        if query.type_ == "Patient":
            sql.append("r.rid = ?")
            args.append(patient)
        elif query.type_ not in SHARED_TYPES:
            sql.append(f"r.rid IN ({_IDX_SELECT} AND sys = 'Patient' AND val = ?)")
            args.extend([query.type_, COMPARTMENT, patient])
    return " AND ".join(sql), args


def _token_condition(alt: tuple[str | None, str | None]) -> tuple[str, list[Any]]:
    system, value = alt
    if system is None:
        return "(val = ?)", [value]
    if system == "":
        return "(sys IS NULL AND val = ?)", [value]
    if value is None:
        return "(sys = ?)", [system]
    return "(sys = ? AND val = ?)", [system, value]


def order_clause(query: SearchQuery) -> tuple[str, list[Any]]:
    """ORDER BY for a query: its `_sort` keys, then insertion order (stable paging by offset)."""
    terms: list[str] = []
    args: list[Any] = []
    for key, descending in query.sort:
        direction = "DESC" if descending else "ASC"
        if key == "_id":
            terms.append(f"r.rid {direction}")
        elif key == "_lastUpdated":
            terms.append(f"r.last_updated {direction}")
        else:
            terms.append(
                f"(SELECT MIN(lo) FROM idx WHERE rtype = r.rtype AND rid = r.rid AND param = ?) {direction}"
            )
            args.append(key)
    terms.append("r.seq ASC")
    return "ORDER BY " + ", ".join(terms), args
