"""SMART resource scopes as the sandbox EHR enforces them (SMART App Launch 2.x, v1 and v2 syntax).

v1: `<patient|user|system>/<Type|*>.<read|write|*>`; read is v2 `rs`, write is `cud`, `*` is `cruds`.
v2: `<patient|user|system>/<Type|*>.<letters>[?param=value&...]`, the letters a non-empty subset of
`cruds` written in that order (the IG lets servers reject other orders, and the sandbox does).

Restricted v2 scopes (`?param=value`) are honoured conservatively: they never allow a read, create,
update or delete (the sandbox does not evaluate a restriction against a resource), and allow a search
only when the search itself carries every one of the scope's `param=value` pairs, so that its results
cannot fall outside the restriction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

CONTEXTS = ("patient", "user", "system")
INTERACTIONS = "cruds"  # create, read, update, delete, search

_SCOPE_RE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(?:\?(.+))?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class Scope:
    context: str  # patient | user | system
    type_: str  # a resource type, or "*"
    interactions: frozenset[str]  # letters of "cruds"
    restrictions: tuple[tuple[str, str], ...] = ()  # v2 ?param=value pairs

    def covers(self, context: str, type_: str, interaction: str) -> bool:
        return self.context == context and self.type_ in ("*", type_) and interaction in self.interactions


def parse_scope(s: str) -> Scope | None:
    """A resource scope, or None for anything else (`launch`, `openid`, a malformed scope...)."""
    m = _SCOPE_RE.match(s.strip())
    if not m:
        return None
    context, type_, action, query = m.groups()
    if action in _V1:
        if query:
            return None  # v1 has no restrictions
        letters = _V1[action]
    else:
        in_order = "".join(ch for ch in INTERACTIONS if ch in action)
        if in_order != action:
            return None  # unknown letters, repeats or out of order (e.g. ".dus")
        letters = action
    restrictions: tuple[tuple[str, str], ...] = ()
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
        except ValueError:
            return None
        restrictions = tuple(pairs)
    return Scope(context, type_, frozenset(letters), restrictions)


def allows(
    scopes: Iterable[str],
    context: str,
    type_: str,
    interaction: str,
    query: Iterable[tuple[str, str]] | None = None,
) -> bool:
    """Whether the granted `scopes` allow `interaction` (one of c r u d s) on `type_` in `context`.

    `query` is the search's own parameters, used only to honour restricted v2 scopes (see the module doc).
    """
    asked = set(query or ())
    for text in scopes:
        scope = parse_scope(text)
        if scope is None or not scope.covers(context, type_, interaction):
            continue
        if not scope.restrictions:
            return True
        if interaction == "s" and set(scope.restrictions) <= asked:
            return True
    return False
