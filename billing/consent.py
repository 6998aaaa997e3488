"""Consent gates everything: episodes of continuous RPM consent."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from typing import overload

from billing.model import ConsentRecord


@dataclass(frozen=True)
class Episode:
    """A maximal period of continuous RPM consent; `end` None means still open (exclusive instant)."""

    index: int
    start: datetime
    end: datetime | None
    consent_ids: tuple[str, ...]

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment and (self.end is None or moment < self.end)


def usable_consents(consents: Iterable[ConsentRecord]) -> list[ConsentRecord]:
    """Consents that can put RPM in force: a known start, and not revoked at an unknown time."""
    return [c for c in consents if c.start is not None and not c.revoked_without_end]


def episodes(consents: Iterable[ConsentRecord]) -> tuple[Episode, ...]:
    """Merge overlapping or touching consent intervals into episodes, in time order."""
    spans = [(c.start, c.end, c.id) for c in usable_consents(consents) if c.start is not None]
    if len(spans) > 1:
        spans.sort(key=_START)
    merged: list[tuple[datetime, datetime | None, list[str]]] = []
    for start, end, consent_id in spans:
        if merged:
            last_start, last_end, ids = merged[-1]
            if last_end is None or start <= last_end:  # overlapping or touching
                new_end = None if last_end is None or end is None else max(last_end, end)
                merged[-1] = (last_start, new_end, [*ids, consent_id])
                continue
        merged.append((start, end, [consent_id]))
    return tuple(
        Episode(index=i, start=start, end=end, consent_ids=tuple(ids))
        for i, (start, end, ids) in enumerate(merged)
    )


_START = itemgetter(0)


class InstantSpans:
    """A few half-open spans of time `[start, end)` (`end` None: open) asked about many moments.

    `positions(moments)` gives for each moment the first span with `start <= moment and (end is None or
    moment < end)`, or None: exactly that test, only faster. Python compares aware datetimes with different
    tzinfo objects by asking both for their UTC offset, which is slow; moments read from FHIR carry a
    fixed-offset `timezone` (one shared object per offset) or the practice zone. So for each fixed offset
    met, the bounds are converted into it once: with the same tzinfo on both sides Python compares the
    fields, which for a fixed offset is the order of the instants. A bound that already has the moment's
    tzinfo is used as it is (Python compares it that way anyway), and so is everything for any other kind
    of tzinfo.
    """

    def __init__(self, spans: Iterable[tuple[datetime, datetime | None]]) -> None:
        self._spans = tuple(spans)
        self._by_zone: dict[object, tuple[tuple[datetime, datetime | None], ...]] = {}

    def positions(self, moments: Iterable[datetime]) -> list[int | None]:
        """The span of each moment (one call for many: this runs for every reading of a month)."""
        if len(self._spans) == 1:  # the month, one consent, most patients' one episode
            return self._in_single_span(moments)
        found: list[int | None] = []
        append = found.append
        zone: object = _NO_ZONE
        spans: tuple[tuple[datetime, datetime | None], ...] = ()
        for moment in moments:
            if moment.tzinfo is not zone:  # readings come in runs of the same offset
                zone = moment.tzinfo
                spans = self.in_zone(zone)
            for index, (start, end) in enumerate(spans):
                if start <= moment and (end is None or moment < end):
                    append(index)
                    break
            else:
                append(None)
        return found

    def _in_single_span(self, moments: Iterable[datetime]) -> list[int | None]:
        """`positions` for one span: the same test, without the loop over spans."""
        found: list[int | None] = []
        append = found.append
        zone: object = _NO_ZONE
        start, end = self._spans[0]
        for moment in moments:
            if moment.tzinfo is not zone:
                zone = moment.tzinfo
                ((start, end),) = self.in_zone(zone)
            append(0 if start <= moment and (end is None or moment < end) else None)
        return found

    def in_zone(self, zone: object) -> tuple[tuple[datetime, datetime | None], ...]:
        """The spans to compare moments whose tzinfo is `zone` with (the same instants, in that offset)."""
        spans = self._by_zone.get(zone)
        if spans is None:
            if type(zone) is not timezone:
                spans = self._spans
            else:
                spans = tuple((_into(start, zone), _into(end, zone)) for start, end in self._spans)
            self._by_zone[zone] = spans
        return spans


_NO_ZONE = object()


@overload
def _into(bound: datetime, zone: timezone) -> datetime: ...
@overload
def _into(bound: None, zone: timezone) -> None: ...
def _into(bound: datetime | None, zone: timezone) -> datetime | None:
    """The same instant in `zone` (unchanged when it is already there or cannot be shown there)."""
    if bound is None or bound.tzinfo is zone:
        return bound
    try:
        return bound.astimezone(zone)
    except OverflowError:  # near year 1 or 9999: compared as it is (exact, only slower)
        return bound


def episode_at(all_episodes: Sequence[Episode], moment: datetime | None) -> Episode | None:
    """The episode in force at `moment`, if any."""
    if moment is None:
        return None
    for episode in all_episodes:
        if episode.contains(moment):
            return episode
    return None


def consent_covering(consents: Iterable[ConsentRecord], moment: datetime) -> ConsentRecord | None:
    """The earliest-starting usable consent in force at `moment`."""
    covering = [
        c
        for c in usable_consents(consents)
        if c.start is not None and c.start <= moment and (c.end is None or moment < c.end)
    ]
    return min(covering, key=lambda c: c.start or moment) if covering else None
