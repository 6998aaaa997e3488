"""JSON text of the sandbox (request bodies, stored resources, responses), with orjson when it is installed.

orjson reads and writes several times faster than the json module, and serialising search Bundles is a good
part of the sandbox's CPU. The json module stays the reference, and reads what orjson would read otherwise:
text orjson refuses (NaN, a number beyond a double, lone surrogates), and text holding a run of 19 or more
digits, because orjson reads an integer beyond 64 bits as a float where json keeps it exact (a FHIR decimal
may be that long). Objects orjson cannot write (integers beyond 64 bits) are written by json. Both write the
same compact JSON, except that floats may be spelled differently (`1e-05` / `1e-5`: the same number) and
that a NaN or an infinity, which only json reads and no FHIR resource may hold, is written as `null`.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ModuleNotFoundError:  # not a declared dependency: the json module does the same, slower
    orjson = None  # type: ignore[assignment]


# bytes.translate maps every digit to "0" and everything else to " ": a long run of digits is then a plain
# substring search, at C speed (~1 us for a 1 kB resource).
_DIGITS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"0" * 19  # the shortest integer orjson may not read exactly (below -2**63)


def loads(data: bytes | str) -> Any:
    """Parse JSON text; raises ValueError (json's own error and message) when it is not JSON."""
    if orjson is not None:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        if _LONG_RUN not in raw.translate(_DIGITS):
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass  # json decides, and words the error
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (non-ASCII characters as themselves, not \\u escapes)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:  # e.g. an integer beyond 64 bits
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dumps_text(value: Any) -> str:
    """`dumps` as a str (the store keeps resources as TEXT)."""
    return dumps(value).decode("utf-8")
