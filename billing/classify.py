"""Classify each activity as interactive or not, and decide whether its time is management time.

Every decision carries a reason in words a billing person understands. Free text is never read to decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

from billing.model import Activity, ActivityKind, Party, PartyKind
from billing.policy import Policy
from billing.result import ActivityClass

ONE_WAY_CATEGORIES = frozenset({"alert", "notification", "reminder"})
IN_PERSON = "FACE"
EMAIL = "EMAILWRIT"
CHAT = "ONLINEWRIT"

MEDIUM_WORDS = {
    "PHONE": "phone call",
    "VIDEOCONF": "video call",
    "FACE": "in-person contact",
    "ONLINEWRIT": "secure message",
    "EMAILWRIT": "email",
    "WRITTEN": "written message",
    "MAILWRIT": "mailed letter",
    "FAXWRIT": "fax",
}
ACTIVITY_WORDS = {
    "data-review": "data review",
    "care-plan": "care-plan work",
    "care-coordination": "care coordination",
    "documentation": "documentation",
}


@dataclass(frozen=True)
class Classification:
    activity_class: ActivityClass
    reason: str
    counts_minutes: bool
    minutes_reason: str
    attempt: bool = False


def describe(activity: Activity) -> str:
    """A short name for the activity: 'phone call', 'data review', ..."""
    if activity.kind is ActivityKind.TIME_ENTRY:
        return ACTIVITY_WORDS.get(activity.activity_code or "", "management time")
    for code in activity.medium:
        if code in MEDIUM_WORDS:
            return MEDIUM_WORDS[code]
    return "communication"


def parties(activity: Activity) -> tuple[Party, ...]:
    return ((activity.sender,) if activity.sender else ()) + activity.recipients


def _staff_side(party: Party, policy: Policy) -> bool:
    """Clinical staff on the practice side; an AI calling system only where the policy allows it."""
    return party.kind.is_staff or (party.kind is PartyKind.AI_SYSTEM and policy.ai_contacts)


def conversation_sides(activity: Activity, policy: Policy) -> tuple[bool, bool, bool]:
    """(patient or caregiver on one side, practice on the opposite side, the practice side is an AI).

    One side is the sender, the other a recipient: a patient talking to staff, or staff to a patient.
    """
    sender = activity.sender
    if sender is None:
        return False, False, False
    if sender.kind.is_patient_side:
        staff = [r for r in activity.recipients if _staff_side(r, policy)]
        return True, bool(staff), bool(staff) and all(r.kind is PartyKind.AI_SYSTEM for r in staff)
    if _staff_side(sender, policy):
        patient_side = any(r.kind.is_patient_side for r in activity.recipients)
        return patient_side, True, sender.kind is PartyKind.AI_SYSTEM
    return any(r.kind.is_patient_side for r in activity.recipients), False, False


def involves_ai(activity: Activity) -> bool:
    return any(p.kind is PartyKind.AI_SYSTEM for p in parties(activity))


def is_staff_message(activity: Activity) -> bool:
    """A completed, clinical, non-automated, not in-person message sent by clinical staff (to anyone).

    CMS counts care-management time as well as the interactive communication, so a staff member's
    clinical message counts toward the month's minutes even though it is not interactive.
    """
    return (
        activity.kind is ActivityKind.COMMUNICATION
        and activity.status == "completed"
        and bool(activity.content)
        and not ONE_WAY_CATEGORIES.intersection(activity.categories)
        and IN_PERSON not in activity.medium
        and activity.sender is not None
        and activity.sender.kind.is_staff
    )


def classify(activity: Activity, policy: Policy, in_chat_session: bool = False) -> Classification:
    """Class (interactive or not) and whether the time counts, each with its reason.

    Consent and care-program attribution are decided by the caller before this is asked.
    """
    if activity.kind is ActivityKind.TIME_ENTRY:
        return _classify_time_entry(activity, policy)
    return _classify_communication(activity, policy, in_chat_session)


class Traits(NamedTuple):
    """An activity's classification with the other answers the engine needs about it (see `Classifier`)."""

    classification: Classification
    description: str  # describe(activity)
    involves_ai: bool  # involves_ai(activity)
    has_performer: bool  # a performer (time entry), else a staff or AI-system party


class Classifier:
    """`classify` for the activities of many months under one policy, each answer remembered per *shape*.

    A classification, its texts and the traits are functions of the policy and of the fields of the activity
    listed in `_shape` only: its kind, status, status reason, activity code, media, categories, content
    topics, the kinds of its sender and recipients, whether it has performers, and whether it is in a live
    chat session. Most activities share a handful of shapes, so most are answered by one dictionary look-up.
    Whoever makes `classify`, `describe`, `involves_ai` or `has_performer` read another field of the
    activity must add it to `_shape`.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        known = _TRAITS_BY_POLICY.get(policy)
        if known is None:
            if len(_TRAITS_BY_POLICY) >= 16:
                _TRAITS_BY_POLICY.clear()
            known = _TRAITS_BY_POLICY[policy] = {}
        self._known = known

    def traits(self, activity: Activity, in_chat_session: bool = False) -> Traits:
        sender = activity.sender
        shape = (
            activity.kind,
            activity.status,
            activity.status_reason,
            activity.activity_code,
            activity.medium,
            activity.categories,
            activity.content,
            None if sender is None else sender.kind,
            tuple(map(_KIND, activity.recipients)),
            bool(activity.performers),
            in_chat_session,
        )
        try:
            found = self._known.get(shape)
        except TypeError:  # a field that is not hashable (not what the mapper builds): no remembering
            return self._decide(activity, in_chat_session)
        if found is None:
            found = self._decide(activity, in_chat_session)
            if len(self._known) >= _SHAPES_LIMIT:
                self._known.clear()
            self._known[shape] = found
        return found

    def _decide(self, activity: Activity, in_chat_session: bool) -> Traits:
        return Traits(
            classify(activity, self.policy, in_chat_session=in_chat_session),
            describe(activity),
            involves_ai(activity),
            has_performer(activity),
        )


_KIND = attrgetter("kind")
_TRAITS_BY_POLICY: dict[Policy, dict[tuple[object, ...], Traits]] = {}
_SHAPES_LIMIT = 4096  # shapes per policy; emptied when full


def has_performer(activity: Activity) -> bool:
    """A time entry names a performer; a communication has a staff member or an AI system among its
    parties."""
    if activity.kind is ActivityKind.TIME_ENTRY:
        return bool(activity.performers)
    return any(p.kind.is_staff or p.kind is PartyKind.AI_SYSTEM for p in parties(activity))


def _classify_time_entry(activity: Activity, policy: Policy) -> Classification:
    what = describe(activity)
    reason = f"{what.capitalize()} without the patient: care-management time, not a conversation"
    if policy.minutes_basis == "interactive":
        return Classification(
            ActivityClass.NON_INTERACTIVE,
            reason,
            False,
            f"policy {policy.name} counts only interactive communication time",
        )
    return Classification(
        ActivityClass.NON_INTERACTIVE, reason, True, f"{what} counts as treatment-management time"
    )


def _classify_communication(activity: Activity, policy: Policy, in_chat_session: bool) -> Classification:
    what = describe(activity)
    if activity.status == "not-done":
        why = f" ({activity.status_reason})" if activity.status_reason else ""
        return Classification(
            ActivityClass.NON_INTERACTIVE,
            f"Attempt, not completed{why}: a voicemail or unanswered contact is not a conversation",
            False,
            "attempts never add minutes",
            attempt=True,
        )
    if activity.status != "completed":
        return Classification(
            ActivityClass.NON_INTERACTIVE,
            f"Communication status is {activity.status or 'missing'}, not completed",
            False,
            "only completed communications count",
        )
    interactive, reason = _interactive_test(activity, policy, in_chat_session, what)
    if interactive:
        return Classification(
            ActivityClass.INTERACTIVE, reason, True, "interactive communication time counts"
        )
    counts, minutes_reason = _non_interactive_minutes(activity, policy)
    return Classification(ActivityClass.NON_INTERACTIVE, reason, counts, minutes_reason)


def _interactive_test(
    activity: Activity, policy: Policy, in_chat_session: bool, what: str
) -> tuple[bool, str]:
    """Whether a completed communication is a real-time, two-way, clinically meaningful conversation."""
    one_way = sorted(ONE_WAY_CATEGORIES.intersection(activity.categories))
    if one_way:
        return False, f"One-way {'/'.join(one_way)}: not a two-way conversation"
    if IN_PERSON in activity.medium:
        return False, "In-person contact: belongs to the visit's E/M code, not to RPM management"
    live_media = policy.interactive_media
    is_chat = CHAT in activity.medium and policy.live_chat
    if not live_media.intersection(activity.medium) and not is_chat:
        if EMAIL in activity.medium:
            return False, "Email is not a real-time conversation"
        if CHAT in activity.medium:
            return False, (
                f"Secure message: asynchronous messaging is not interactive under policy {policy.name}"
            )
        media = ", ".join(activity.medium) or "none recorded"
        return False, f"Medium ({media}) is not a real-time audio or video medium under policy {policy.name}"
    patient_side, practice_side, via_ai = conversation_sides(activity, policy)
    if not patient_side:
        if any(p.kind is PartyKind.RELATED_PERSON for p in parties(activity)):
            return False, "The related person is not a documented caregiver of this patient"
        return False, "Care-team communication without the patient or a caregiver"
    if not practice_side:
        if involves_ai(activity) and not policy.ai_contacts:
            return False, f"AI-system contacts are not allowed under policy {policy.name}"
        return False, "No clinical staff member on the other side of the conversation"
    chat_only = is_chat and not live_media.intersection(activity.medium)
    if chat_only and not in_chat_session:
        return False, "Secure message outside a live chat session (alternating replies within the window)"
    # In a live chat session the clinical content may sit in any message of the session.
    if not activity.content and not chat_only:
        return False, "No clinical content recorded (no rpm-content topic or reason)"
    with_whom = (
        "caregiver"
        if any(p.kind is PartyKind.CAREGIVER for p in parties(activity))
        and not any(p.kind is PartyKind.PATIENT for p in parties(activity))
        else "patient"
    )
    topics = ", ".join(c.replace("-", " ") for c in activity.content) or "the session's clinical content"
    by = " by an AI calling system" if via_ai else ""
    kind = "live chat session" if is_chat and in_chat_session else what
    return True, f"Completed {kind}{by} with the {with_whom} about {topics}: interactive communication"


def _non_interactive_minutes(activity: Activity, policy: Policy) -> tuple[bool, str]:
    if policy.minutes_basis == "interactive":
        return False, f"policy {policy.name} counts only interactive communication time"
    if is_staff_message(activity):
        return True, "a clinical staff message counts as treatment-management time"
    if ONE_WAY_CATEGORIES.intersection(activity.categories):
        return False, "automated alerts, notifications and reminders never add minutes"
    if IN_PERSON in activity.medium:
        return False, "in-person time belongs to the visit"
    if activity.sender is not None and activity.sender.kind.is_patient_side:
        return False, "messages sent by the patient add no staff time"
    if not activity.content:
        return False, "no clinical content recorded"
    return False, "not sent by clinical staff"


def chat_sessions(messages: Sequence[Activity], policy: Policy) -> set[str]:
    """Ids of secure messages that belong to a qualifying live-chat session (policy `live_chat`).

    Consecutive messages form a session while they alternate between the patient/caregiver and staff with at
    most `chat_window` between their `sent` times; a session counts when it holds at least one message from
    each side (always true for two or more alternating messages) and at least one rpm-content coding.
    """
    if not policy.live_chat:
        return set()
    candidates = sorted(
        (
            m
            for m in messages
            if m.kind is ActivityKind.COMMUNICATION
            and m.status == "completed"
            and CHAT in m.medium
            and EMAIL not in m.medium
            and m.sent is not None
            and not ONE_WAY_CATEGORIES.intersection(m.categories)
        ),
        key=lambda m: (m.sent, m.id),
    )
    qualifying: set[str] = set()
    session: list[tuple[Activity, str]] = []

    def close() -> None:
        sides = {side for _, side in session}
        if sides == {"patient", "staff"} and any(m.content for m, _ in session):
            qualifying.update(m.id for m, _ in session)
        session.clear()

    for message in candidates:
        side = _chat_side(message, policy)
        if side is None:
            close()
            continue
        if session:
            previous, previous_side = session[-1]
            assert previous.sent is not None and message.sent is not None
            if side == previous_side or message.sent - previous.sent > policy.chat_window:
                close()
        session.append((message, side))
    close()
    return qualifying


def _chat_side(message: Activity, policy: Policy) -> str | None:
    sender = message.sender
    if sender is None:
        return None
    if sender.kind.is_patient_side and any(_staff_side(r, policy) for r in message.recipients):
        return "patient"
    if _staff_side(sender, policy) and any(r.kind.is_patient_side for r in message.recipients):
        return "staff"
    return None
