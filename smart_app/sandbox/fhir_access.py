"""Access control of the sandbox FHIR server, like an EHR's: SMART scopes and the patient in context.

- `system/` and `user/` scopes reach every patient (the sandbox keeps no per-user patient lists).
- `patient/` scopes reach one patient's compartment (`search.PATIENT_COMPARTMENT`) and need a patient in
  the token's launch context. With such a token:
  - a read of another patient's resource answers 403 (chosen over 404: a sandbox should say why);
  - a search is filtered to the patient's compartment, and one that names only other patients (in
    `patient`, `subject` or `member`) answers 403;
  - a write must leave the resource in the patient's compartment and in no other patient's (403);
  - Practitioner, PractitionerRole and Organization (shared, in no compartment) are readable when the
    scopes name the type, never writable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smart_app.sandbox import search
from smart_app.sandbox.fhir_errors import forbidden
from smart_app.sandbox.scopes import allows

INTERACTION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


@dataclass(frozen=True)
class Reach:
    """How far an allowed interaction reaches: every patient (`patient` None) or one patient's compartment."""

    patient: str | None = None

    def check_readable(self, resource: dict[str, Any]) -> None:
        if self.patient is None or resource.get("resourceType") in search.SHARED_TYPES:
            return
        if self.patient not in search.compartment_patients(resource):
            raise forbidden(
                f"{resource.get('resourceType')}/{resource.get('id')} is outside the compartment of the "
                f"patient in context (Patient/{self.patient})"
            )

    def check_writable(self, resource: dict[str, Any]) -> None:
        if self.patient is None:
            return
        type_ = resource.get("resourceType")
        if type_ in search.SHARED_TYPES:
            raise forbidden(f"a patient-context token cannot write {type_} resources")
        patients = search.compartment_patients(resource)
        others = sorted(patients - {self.patient})
        if others:
            raise forbidden(
                f"{type_} references Patient/{others[0]}, not the patient in context (Patient/{self.patient})"
            )
        if self.patient not in patients:
            raise forbidden(
                f"{type_} is not in the compartment of the patient in context (Patient/{self.patient})"
            )

    def check_search(self, query: search.SearchQuery) -> None:
        """403 for a search that names patients and none of them is the one in context."""
        if self.patient is None:
            return
        for clause in query.clauses:
            if clause.kind == "reference" and clause.name in ("patient", "subject", "member"):
                named = {id_ for type_, id_ in clause.alternatives if type_ in (None, "Patient")}
                if named and self.patient not in named:
                    raise forbidden(
                        f"search parameter '{clause.name}' names a patient other than the one in context "
                        f"(Patient/{self.patient})"
                    )


@dataclass(frozen=True)
class Principal:
    """Who is asking: the granted scopes and launch patient of a bearer token; everyone when auth is off."""

    scopes: tuple[str, ...] = ()
    patient: str | None = None
    unrestricted: bool = False

    def reach(self, type_: str, interaction: str, query: Iterable[tuple[str, str]] | None = None) -> Reach:
        """The reach of `interaction` (c r u d s) on `type_`; FhirError 403 when the scopes do not allow it.

        system/ and user/ scopes are tried before patient/ ones: the widest grant wins.
        """
        if self.unrestricted:
            return Reach()
        pairs = list(query or ())
        if any(allows(self.scopes, context, type_, interaction, pairs) for context in ("system", "user")):
            return Reach()
        if allows(self.scopes, "patient", type_, interaction, pairs):
            if self.patient is None:
                raise forbidden("the token has patient/ scopes but no patient in its launch context")
            return Reach(self.patient)
        raise forbidden(f"the token's scopes do not allow {INTERACTION_NAMES[interaction]} on {type_}")
