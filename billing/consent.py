"""Consent gates everything: episodes of continuous RPM consent."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

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
    spans = sorted(
        ((c.start, c.end, c.id) for c in usable_consents(consents) if c.start is not None),
        key=lambda span: span[0],
    )
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
