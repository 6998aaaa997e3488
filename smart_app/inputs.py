"""Reading FHIR input files: a Bundle JSON file, an NDJSON file, or a Bulk Data export directory.

Resources are streamed one at a time (a month-end export can hold millions of Observations). A line that is
not JSON is reported as a skipped resource with its file and line number and the run goes on; a path that
cannot be read at all is an `InputError` (exit code UNREADABLE_INPUT).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from smart_app.errors import InputError

_fast_loads: Callable[[str], Any] | None
try:  # orjson parses several times faster; the json module is the reference and the fallback
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

# Bulk Data layout: one file per resource type. Reading the small, referenced types first lets the
# collector resolve references early; it accepts any order, so this is only a courtesy to memory.
_TYPE_ORDER = (
    "Patient",
    "Consent",
    "Device",
    "RelatedPerson",
    "Practitioner",
    "PractitionerRole",
    "Encounter",
    "ChargeItem",
    "Communication",
    "Observation",
)


# Offered each NDJSON line before it is parsed (bytes when ASCII, else text); True when it has read the line.
LineTaker = Callable[[str | bytes], bool]


# Bytes read from a file at a time: a month's NDJSON is read through once, front to back; large reads
# make iterating its lines about a third cheaper than the default 8 KiB.
_READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class BadLine:
    """An input line or document that is not a JSON object."""

    source: str
    line: int
    problem: str


def iter_input(path: Path, take_line: LineTaker | None = None) -> Iterator[dict | BadLine]:
    """Yield every resource (dict) in `path`, or a BadLine where a line cannot be read.

    `take_line`, when given, is offered each NDJSON line first; a line it takes (returns True for) is not
    parsed nor yielded (`InboundCollector.add_line`: device readings read straight from the line).
    """
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix in (".ndjson", ".json") and p.is_file()),
            key=_bulk_order,
        )
        if not files:
            raise InputError(f"no .ndjson or .json files in directory {path}")
        for file in files:
            yield from _iter_file(file, take_line)
        return
    yield from _iter_file(path, take_line)


def _bulk_order(path: Path) -> tuple[int, str]:
    stem = path.name.split(".")[0]
    rank = _TYPE_ORDER.index(stem) if stem in _TYPE_ORDER else len(_TYPE_ORDER)
    return rank, path.name


def _iter_file(path: Path, take_line: LineTaker | None) -> Iterator[dict | BadLine]:
    try:
        handle = path.open("r", encoding="utf-8", buffering=_READ_BUFFER)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            first = handle.read(1)
            while first and first.isspace():
                first = handle.read(1)
            if not first:
                return  # an empty file holds no resources
            handle.seek(0)
            if path.suffix != ".ndjson" and _is_single_document(path):
                yield from _iter_document(path)
                return
            with path.open("rb", buffering=_READ_BUFFER) as raw:
                yield from _iter_ndjson(raw, path.name, take_line)
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text") from None


def _is_single_document(path: Path) -> bool:
    """One JSON value (pretty-printed or on one line) rather than one resource per line (NDJSON)."""
    with path.open("r", encoding="utf-8") as handle:
        first_line = handle.readline()
        second_line = handle.readline()
        while second_line and not second_line.strip():
            second_line = handle.readline()
    try:
        json.loads(first_line)
    except json.JSONDecodeError:
        return True  # the first line is not a whole object: a pretty-printed document
    return not second_line


def _iter_document(path: Path) -> Iterator[dict | BadLine]:
    try:
        with path.open("r", encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(document, dict) or "resourceType" not in document:
        raise InputError(f"{path} is not a FHIR resource or Bundle (no resourceType)")
    yield from _flatten(document, path.name, 0)


def _flatten(resource: dict, source: str, line: int) -> Iterator[dict | BadLine]:
    """A Bundle (searchset, collection, transaction) stands for its entries' resources."""
    if resource.get("resourceType") != "Bundle":
        yield resource
        return
    for index, entry in enumerate(resource.get("entry") or []):
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(inner, dict):
            yield from _flatten(inner, source, line)
        else:
            yield BadLine(source, line, f"Bundle.entry[{index}] has no resource object")


def _iter_ndjson(handle: BinaryIO, name: str, take_line: LineTaker | None) -> Iterator[dict | BadLine]:
    """The resources of an NDJSON file opened in binary mode, line by line, as a text reader would see them.

    Reading bytes spares decoding every line to text (most are offered to `take_line` and never parsed):
    an ASCII line is UTF-8 as it is; any other line is decoded (invalid UTF-8 raises UnicodeDecodeError, as
    the text reader did). Lines are those of a text reader with universal newlines: a carriage return that
    is not part of a "\r\n" ending also ends a line, and line numbers count it.
    """
    number = 0
    for raw in handle:
        if b"\r" in raw and (raw.count(b"\r") > 1 or not raw.endswith(b"\r\n")):
            for text in _universal_lines(raw.decode("utf-8")):
                number += 1
                if not (text.isspace() or not text or (take_line is not None and take_line(text))):
                    yield from _parse_line(text, name, number)
            continue
        number += 1
        line: str | bytes = raw if raw.isascii() else raw.decode("utf-8")
        if line.isspace() or not line:  # `not line.strip()`, without copying the line
            continue
        if take_line is not None and take_line(line):
            continue
        yield from _parse_line(line if isinstance(line, str) else line.decode("ascii"), name, number)


def _universal_lines(text: str) -> list[str]:
    """The lines a text reader with universal newlines makes of `text` (which ends with at most one "\n")."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and not lines[-1] else lines


def _parse_line(text: str, name: str, number: int) -> Iterator[dict | BadLine]:
    """The resource(s) of one NDJSON line, or a BadLine; the file's first line not being JSON is an InputError
    (the file is neither a JSON document nor NDJSON).

    orjson parses several times faster when it is installed. The json module stays the reference: a line
    orjson refuses is read again by it, so what is accepted (NaN, huge integers, lone surrogates) and the
    words of every error are exactly the json module's.
    """
    try:
        try:
            value = (_fast_loads or json.loads)(text)
        except ValueError:
            value = json.loads(text)
    except json.JSONDecodeError as exc:
        if number == 1:
            raise InputError(f"{name} is neither a JSON document nor NDJSON ({exc.msg})") from None
        yield BadLine(name, number, f"not valid JSON ({exc.msg})")
        return
    if not isinstance(value, dict):
        yield BadLine(name, number, "not a JSON object")
    elif value.get("resourceType") != "Bundle":
        yield value  # what _flatten does for a resource that is not a Bundle, without a generator
    else:
        yield from _flatten(value, name, number)
