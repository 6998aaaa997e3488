"""Strict validation of outbound FHIR JSON against the R4B models of fhir.resources.

R4B is used for our R4 (4.0.1) output: the element names of the resources we write are identical in R4 and
R4B, whereas the package's root (R5) differs. The models reject unknown elements, empty strings and dateTimes
with a time but no offset; they do not check code enumerations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

# fhir.resources (pydantic models) is imported on the first validation, not with this module: the import
# costs about 0.2 s of CPU, and a run that writes nothing (`compute` without --out) never validates.

# How many individual problems a message lists before summarising the rest.
MAX_PROBLEMS = 5


class OutboundValidationError(ValueError):
    """A resource we built is not valid FHIR R4; the message names the resource and the problem."""

    def __init__(self, resource_type: str, resource_id: str, problem: str) -> None:
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.problem = problem
        super().__init__(f"{resource_type} {resource_id} is not valid FHIR R4: {problem}")


def resource_label(resource: Mapping[str, Any]) -> str:
    """How a message names a resource: its id, else its first identifier (a new resource has no id yet)."""
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    identifiers = resource.get("identifier")
    if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], Mapping):
        first = identifiers[0]
        return f"(no id; identifier {first.get('system', '')}|{first.get('value', '')})"
    return "(no id)"


def validate_resource(resource: Mapping[str, Any]) -> None:
    """Raise `OutboundValidationError` unless `resource` is a valid R4 (R4B model) resource."""
    if not isinstance(resource, Mapping):
        raise OutboundValidationError(
            "(unknown type)", "(no id)", f"expected a JSON object, got {type(resource).__name__}"
        )
    label = resource_label(resource)
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise OutboundValidationError("(unknown type)", label, "resourceType is missing")
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource
    from pydantic import ValidationError

    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError):
        model = None
    if model is None or not issubclass(model, Resource):
        raise OutboundValidationError(rtype, label, f"{rtype!r} is not an R4 resource type")
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        raise OutboundValidationError(rtype, label, describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """Element paths and messages only: the offending values may be patient data, so they are left out."""
    errors = exc.errors()
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(resource)'}: {e['msg']}" for e in errors[:MAX_PROBLEMS]
    ]
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more problem(s)")
    return "; ".join(parts)
