"""The project's FHIR definitions (CodeSystems, ValueSet, extension StructureDefinitions, examples).

They ship as FHIR R4 JSON in `fhir_mapping/definitions/`, one resource per file named `<Type>-<id>.json`,
written for the default canonical base (`fhir_mapping.canon.CANON`).
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib import resources
from typing import Any

_FOLDER = "definitions"
_SUFFIX = ".json"


class DefinitionNotFound(LookupError):
    """No shipped definition has that name."""


@lru_cache(maxsize=1)
def definition_names() -> tuple[str, ...]:
    """Names of the shipped definitions (`CodeSystem-care-program`, ...), sorted."""
    folder = resources.files("fhir_mapping").joinpath(_FOLDER)
    return tuple(
        sorted(entry.name[: -len(_SUFFIX)] for entry in folder.iterdir() if entry.name.endswith(_SUFFIX))
    )


@cache
def _text(name: str) -> str:
    return resources.files("fhir_mapping").joinpath(_FOLDER, name + _SUFFIX).read_text(encoding="utf-8")


def load_definition(name: str) -> dict[str, Any]:
    """One definition as a fresh dict (safe to modify).

    `name` is the file name with or without `.json` (`CodeSystem-care-program`) or `Type/id`
    (`CodeSystem/care-program`).
    """
    stem = name.removesuffix(_SUFFIX).replace("/", "-", 1)
    if stem not in definition_names():
        raise DefinitionNotFound(f"no FHIR definition named {name!r}; known: {', '.join(definition_names())}")
    loaded: dict[str, Any] = json.loads(_text(stem))
    return loaded


def all_definitions() -> list[dict[str, Any]]:
    """Every shipped definition, in name order."""
    return [load_definition(name) for name in definition_names()]
