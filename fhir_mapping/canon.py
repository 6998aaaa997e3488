"""The project's canonical URLs and the external code systems the contract names.

`CANON` is configurable per deployment; everything here derives from the default, which tests use.
Functions that build URLs take `canon` so a deployment can pass its own base.
"""

from __future__ import annotations

from dataclasses import dataclass

CANON = "http://rpm-billing.org/fhir"


def cs(name: str, canon: str = CANON) -> str:
    """URL of one of the project's CodeSystems."""
    return f"{canon}/CodeSystem/{name}"


def sd(name: str, canon: str = CANON) -> str:
    """URL of one of the project's StructureDefinitions (extensions)."""
    return f"{canon}/StructureDefinition/{name}"


# The project's own terminology and extensions (shipped as FHIR JSON in fhir_mapping/definitions/).
CARE_PROGRAM_CS = cs("care-program")  # rpm | rtm | ccm | pcm
RPM_ACTIVITY_CS = cs("rpm-activity")  # data-review | care-plan | care-coordination | documentation
RPM_CONTENT_CS = cs("rpm-content")  # physiologic-data | symptoms | medication-adherence | care-plan
CARE_PROGRAM_EXT = sd("care-program")  # valueCoding from CARE_PROGRAM_CS
ACTIVITY_PERIOD_EXT = sd("activity-period")  # valuePeriod on Communication
CHARGE_KEY_SYSTEM = f"{CANON}/charge-key"
MONTHLY_LOG_SYSTEM = f"{CANON}/monthly-log"
BILLING_POLICY_BASE = f"{CANON}/billing-policy"

RPM_ACTIVITY_CODES = ("data-review", "care-plan", "care-coordination", "documentation")
RPM_CONTENT_CODES = ("physiologic-data", "symptoms", "medication-adherence", "care-plan")
CARE_PROGRAM_CODES = ("rpm", "rtm", "ccm", "pcm")

# External systems
CONSENT_SCOPE_CS = "http://terminology.hl7.org/CodeSystem/consentscope"
PARTICIPATION_MODE_CS = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
COMMUNICATION_CATEGORY_CS = "http://terminology.hl7.org/CodeSystem/communication-category"
COMMUNICATION_NOT_DONE_CS = "http://terminology.hl7.org/CodeSystem/communication-not-done-reason"
CPT_SYSTEM = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DOCUMENT_CATEGORY_CS = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
MONTHLY_LOG_TYPE = (LOINC, "11506-3", "Progress note")


@dataclass(frozen=True, slots=True)
class Systems:
    """The project's canonical URLs for one deployment's `canon` base."""

    care_program_cs: str
    rpm_activity_cs: str
    rpm_content_cs: str
    care_program_ext: str
    activity_period_ext: str
    charge_key_system: str

    @classmethod
    def for_canon(cls, canon: str = CANON) -> Systems:
        return cls(
            care_program_cs=cs("care-program", canon),
            rpm_activity_cs=cs("rpm-activity", canon),
            rpm_content_cs=cs("rpm-content", canon),
            care_program_ext=sd("care-program", canon),
            activity_period_ext=sd("activity-period", canon),
            charge_key_system=f"{canon}/charge-key",
        )
