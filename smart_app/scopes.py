"""SMART scope syntax on the client side: choose v1 or v2, format requests, read back what was granted.

SMART v1 spells resource scopes `<context>/<Type>.read|write|*`; v2 spells them `<context>/<Type>.<cruds>`
(letters in that order) with an optional `?param=value` constraint. Servers advertise `permission-v1` /
`permission-v2` in `.well-known/smart-configuration`. We send one syntax per server and always parse the
granted `scope` accepting both, because servers may answer in the other syntax (Epic reportedly grants v1
spellings to v2-registered apps).

Reading the grant matters: a server may grant less than asked, and then filters searches silently. `missing()`
lets the job say "the server did not grant system/ChargeItem.c: write-back impossible" instead of reading an
empty search as "no data".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from smart_app.discovery import SmartConfiguration

Syntax = Literal["v1", "v2"]
CONTEXTS = ("patient", "user", "system")
V2_ORDER = "cruds"
_V1_READ = frozenset("rs")
_V1_WRITE = frozenset("cud")
_V1_SUFFIX = {"read": _V1_READ, "write": _V1_WRITE, "*": frozenset(V2_ORDER)}
_SCOPE_RE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]*)\.(?P<perm>read|write|\*|[cruds]+)"
    r"(?:\?(?P<constraint>.+))?$"
)


class Grant(NamedTuple):
    """One resource scope: context, resource type (or `*`), interaction letters from `cruds`.

    `constraint` is a v2 query restriction (`category=...|vital-signs`), "" when unrestricted. A
    constrained grant is narrower than an unrestricted one and never satisfies an unrestricted requirement.
    """

    context: str
    type: str
    interactions: frozenset[str]
    constraint: str = ""

    def spell(self, syntax: Syntax = "v2") -> str:
        """This grant as scope text (v1 may need two scopes, space-separated: `.read` and `.write`)."""
        return " ".join(_spell(self.context, self.type, self.interactions, syntax, self.constraint))


def choose_syntax(config: SmartConfiguration | None, override: Syntax | None = None) -> Syntax:
    """v2 when the server advertises `permission-v2`, else v1; a per-tenant `override` always wins.

    A server that advertises both gets v2 (certified servers must read both; the IG maps v1 onto v2). Servers
    known to misbehave with v2 are what `override` is for.
    """
    if override is not None:
        if override not in ("v1", "v2"):
            raise ValueError(f"scope syntax must be 'v1' or 'v2', not {override!r}")
        return override
    capabilities = config.capabilities if config is not None else frozenset()
    return "v2" if "permission-v2" in capabilities else "v1"


def format_scopes(context: str, wanted: Mapping[str, str], syntax: Syntax) -> str:
    """The scope string asking, in `context`, for each `{type: letters}` (letters from `cruds`).

    v2: `system/Observation.rs`. v1 has only `.read` (= rs) and `.write` (= cud): any read letter asks for
    `.read`, any write letter for `.write`, so v1 may ask for more than the letters say.
    """
    if context not in CONTEXTS:
        raise ValueError(f"scope context must be one of {', '.join(CONTEXTS)}, not {context!r}")
    if syntax not in ("v1", "v2"):
        raise ValueError(f"scope syntax must be 'v1' or 'v2', not {syntax!r}")
    out: list[str] = []
    for type_, letters in wanted.items():
        if type_ != "*" and not re.fullmatch(r"[A-Z][A-Za-z]*", type_):
            raise ValueError(f"not a FHIR resource type: {type_!r}")
        interactions = frozenset(letters)
        if not interactions or not interactions <= frozenset(V2_ORDER):
            raise ValueError(f"interactions for {type_} must be letters from 'cruds', not {letters!r}")
        for scope in _spell(context, type_, interactions, syntax):
            if scope not in out:
                out.append(scope)
    return " ".join(out)


def _spell(
    context: str, type_: str, interactions: frozenset[str], syntax: Syntax, constraint: str = ""
) -> list[str]:
    if syntax == "v2":
        letters = "".join(c for c in V2_ORDER if c in interactions)
        return [f"{context}/{type_}.{letters}" + (f"?{constraint}" if constraint else "")]
    suffixes = [s for s, letters in (("read", _V1_READ), ("write", _V1_WRITE)) if interactions & letters]
    return [f"{context}/{type_}.{suffix}" for suffix in suffixes]


def parse_scope(scope: str) -> Grant | None:
    """One resource scope in v1 or v2 syntax; None for anything else (openid, launch/patient, junk)."""
    match = _SCOPE_RE.match(scope.strip())
    if not match:
        return None
    perm = match["perm"]
    # v2 wants the letters in c-r-u-d-s order without repeats (servers MAY reject others); reading a grant
    # we are lenient and accept any order.
    interactions = _V1_SUFFIX[perm] if perm in _V1_SUFFIX else frozenset(perm)
    return Grant(match["context"], match["type"], interactions, match["constraint"] or "")


def parse_granted(scope_string: str | Iterable[str] | None) -> set[Grant]:
    """The resource grants in a token response's `scope` (space-separated), both syntaxes accepted."""
    if scope_string is None:
        return set()
    items = scope_string.split() if isinstance(scope_string, str) else list(scope_string)
    grants = set()
    for item in items:
        grant = parse_scope(item)
        if grant is not None:
            grants.add(grant)
    return grants


def missing(
    required: str | Iterable[str] | Iterable[Grant], granted: str | Iterable[str] | Iterable[Grant]
) -> set[Grant]:
    """The part of each required grant that `granted` does not cover (empty set: everything granted).

    A requirement is covered by grants in the same context for the same type or `*`, unrestricted (or with
    the very same constraint); letters may come from several grants (`.rs` + `.c`). Each returned Grant
    holds only the missing letters.
    """
    need = _as_grants(required)
    have = _as_grants(granted)
    gaps = set()
    for req in need:
        covered: set[str] = set()
        for grant in have:
            if (
                grant.context == req.context
                and grant.type in (req.type, "*")
                and grant.constraint in ("", req.constraint)
            ):
                covered |= grant.interactions
        lacking = req.interactions - covered
        if lacking:
            gaps.add(req._replace(interactions=frozenset(lacking)))
    return gaps


def describe_missing(gaps: Iterable[Grant], syntax: Syntax = "v2") -> str:
    """Human text for `missing()`'s result, e.g. "system/ChargeItem.c, system/DocumentReference.c"."""
    return ", ".join(sorted(g.spell(syntax) for g in gaps))


def _as_grants(value: str | Iterable[str] | Iterable[Grant]) -> set[Grant]:
    if isinstance(value, str):
        return parse_granted(value)
    grants: set[Grant] = set()
    for item in value:
        if isinstance(item, Grant):
            grants.add(item)
        elif isinstance(item, str):
            grants |= parse_granted(item)
        else:
            raise TypeError(f"expected a scope string or Grant, not {type(item).__name__}")
    return grants
