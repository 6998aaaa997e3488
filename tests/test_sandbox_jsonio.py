"""The sandbox's JSON text (smart_app/sandbox/jsonio.py): orjson when installed, the json module's results."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from smart_app.sandbox import jsonio

RESOURCE = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Puls – Ruhe, 心拍"},
    "valueQuantity": {"value": 72.5, "unit": "/min"},
    "component": [{"valueInteger": -3}, {"valueBoolean": False}, {"valueString": 'quote " and \\ and \n'}],
    "note": [],
    "extension": None,
}


@pytest.mark.parametrize(
    "value",
    [
        RESOURCE,
        {"a": 1, "b": [1.5, 0.1, 123456789.123, 2**63 - 1, -(2**63)], "c": {"": ""}},
        ["\u2028", "\x00\x1f", "é", "😀"],
        {"big": 2**64 + 1},  # beyond orjson: json writes it
    ],
)
def test_written_text_reads_back_as_json_reads_it(value: Any) -> None:
    data = jsonio.dumps(value)
    assert json.loads(data) == value
    assert jsonio.loads(data) == value
    assert jsonio.dumps_text(value) == data.decode("utf-8")


def test_compact_utf8_like_the_json_module() -> None:
    reference = json.dumps(RESOURCE, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert jsonio.dumps(RESOURCE) == reference


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),  # beyond 64 bits
        ('{"n": -9223372036854775809}', {"n": -9223372036854775809}),  # just below -2**63
        ('{"n": 18446744073709551616}', {"n": 18446744073709551616}),  # just above 2**64 - 1
        ('{"n": 1e400}', {"n": float("inf")}),  # beyond a double
        ('{"n": 0.1234567890123456789012}', {"n": 0.1234567890123456789012}),
        ('{"s": "\\ud800"}', {"s": "\ud800"}),  # a lone surrogate
        (b'{"k": 1, "k": 2}', {"k": 2}),  # the last of repeated keys
        ("  [1, 2]  ", [1, 2]),
    ],
)
def test_what_json_accepts_is_accepted(text: str | bytes, expected: Any) -> None:
    assert jsonio.loads(text) == expected == json.loads(text)


def test_nan_is_read_as_json_reads_it() -> None:
    value = jsonio.loads('{"x": NaN}')
    assert math.isnan(value["x"])


@pytest.mark.parametrize("text", ["", "{", '{"a": }', "[1,]", b"\xff\xfe", "{'a': 1}"])
def test_what_is_not_json_raises_jsons_error(text: str | bytes) -> None:
    with pytest.raises(ValueError) as ours:
        jsonio.loads(text)
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)
