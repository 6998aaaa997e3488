"""smart_app.inputs: NDJSON read as bytes gives the lines, numbers and errors a text reader gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smart_app.errors import InputError
from smart_app.inputs import BadLine, iter_input

A = b'{"resourceType":"Patient","id":"a"}'
B = b'{"resourceType":"Patient","id":"b","name":[{"text":"Jos\xc3\xa9"}]}'  # UTF-8, not ASCII
C = b'{"resourceType":"Patient","id":"c"}'


def text_reader(path: Path) -> list[object]:
    """What the reader gave when it read NDJSON as text (universal newlines), for comparison."""
    found: list[object] = []
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                found.append(("bad", number, f"not valid JSON ({exc.msg})"))
                continue
            found.append(value if isinstance(value, dict) else ("bad", number, "not a JSON object"))
    return found


def as_read(path: Path) -> list[object]:
    return [("bad", i.line, i.problem) if isinstance(i, BadLine) else i for i in iter_input(path)]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(A + b"\n" + B + b"\n" + C + b"\n", id="lf"),
        pytest.param(A + b"\r\n" + B + b"\r\n" + C, id="crlf-no-final-newline"),
        pytest.param(A + b"\n\n  \n" + C + b"\n", id="blank-lines-count"),
        pytest.param(A + b"\r" + B + b"\r" + C + b"\r", id="cr-only"),
        pytest.param(A + b"\r\r\n" + C + b"\n", id="cr-before-crlf"),
        pytest.param(A + b"\n{\r}\n" + C + b"\n", id="cr-inside-a-line-splits-it"),
        pytest.param(A + b"\nnot json\n[1]\n" + C + b"\n", id="bad-lines"),
        pytest.param(A + b"\n" + b'{"resourceType":"Patient","id":"d","x":NaN}\n', id="nan-as-json-reads-it"),
    ],
)
def test_bytes_reader_gives_what_the_text_reader_gave(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(content)
    assert as_read(path) == text_reader(path)


def test_invalid_utf8_is_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(A + b"\n" + b'{"resourceType":"Patient","id":"\xff"}\n')
    with pytest.raises(InputError, match="is not UTF-8 text"):
        list(iter_input(path))


def test_first_line_not_json_is_not_ndjson(tmp_path: Path) -> None:
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + A + b"\n")  # a byte order mark: not JSON for the json module
    with pytest.raises(InputError, match="neither a JSON document nor NDJSON"):
        list(iter_input(path))
