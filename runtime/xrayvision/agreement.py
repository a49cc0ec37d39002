"""Agreement between the AI's and the radiologist's severities (pure: no I/O).

At a severity threshold T, a report is positive when its severity >= T and negative when
0 <= severity < T; -1 means "not assessed" and puts the exam in no class: it is counted
apart (``not_assessed``), never as a negative. With the radiologist as the reference:
TP both positive, TN both negative, FP AI positive only, FN radiologist positive only.
Ratios with a zero denominator are None ("no data"), not 0.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLASSES = ("TP", "TN", "FP", "FN")
PERIODS = ("day", "week", "month")


def classify(ai_severity: int, rad_severity: int, threshold: int) -> str | None:
    """TP, TN, FP or FN; None when either severity is -1 (not assessed)."""
    if ai_severity < 0 or rad_severity < 0:
        return None
    ai, rad = ai_severity >= threshold, rad_severity >= threshold
    if ai and rad:
        return "TP"
    if not ai and not rad:
        return "TN"
    return "FP" if ai else "FN"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class Confusion:
    tp: int = 0
    tn: int = 0
    fp: int = 0
    fn: int = 0
    not_assessed: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.tn + other.tn, self.fp + other.fp,
                         self.fn + other.fn, self.not_assessed + other.not_assessed)

    @property
    def assessed(self) -> int:
        return self.tp + self.tn + self.fp + self.fn

    @property
    def sensitivity(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float | None:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float | None:
        return _ratio(self.tn, self.tn + self.fn)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.tp + self.tn, self.assessed)

    def as_dict(self) -> dict[str, int | float | None]:
        return {
            "tp": self.tp, "tn": self.tn, "fp": self.fp, "fn": self.fn,
            "assessed": self.assessed, "not_assessed": self.not_assessed,
            "sensitivity": self.sensitivity, "specificity": self.specificity,
            "ppv": self.ppv, "npv": self.npv, "f1": self.f1, "accuracy": self.accuracy,
        }


def confusion(pairs: Iterable[tuple[int, int]], threshold: int) -> Confusion:
    """The confusion matrix of (AI severity, radiologist severity) pairs."""
    return counted_confusion(Counter(pairs), threshold)


def counted_confusion(pairs: Mapping[tuple[int, int], int], threshold: int) -> Confusion:
    """The confusion matrix of (AI severity, radiologist severity) pairs -> how many."""
    counts = dict.fromkeys((*CLASSES, None), 0)
    for (ai, rad), n in pairs.items():
        counts[classify(ai, rad, threshold)] += n
    return Confusion(counts["TP"], counts["TN"], counts["FP"], counts["FN"], counts[None])


def period_start(day: dt.date, period: str) -> dt.date:
    """The first day of the day's period: itself, its ISO week's Monday, or its month's 1st."""
    if period == "day":
        return day
    if period == "week":
        return day - dt.timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"period must be one of {', '.join(PERIODS)}")


def roll_up(days: Mapping[str, Confusion], period: str) -> dict[str, Confusion]:
    """Per-day counts (keys YYYY-MM-DD) summed into periods keyed by their first day,
    in date order."""
    result: dict[str, Confusion] = {}
    for key in sorted(days):
        start = period_start(dt.date.fromisoformat(key[:10]), period).isoformat()
        result[start] = result.get(start, Confusion()) + days[key]
    return result


REVIEW_NAMES = {1: "correct", 0: "incorrect", -1: "not_reviewed"}


@dataclass(frozen=True)
class Figures:
    """The counts the global statistics are made of, over some receipt window; two
    windows' figures add up to those of both (days summed, and the edges of a window).

    ``ai``: AI reads by severity; ``rad``: checked radiologist reports by severity (of
    the unit compared: studies or images); ``pairs``: units with both, by (AI, radiologist)
    severity; ``reviews``: AI reads by review verdict (1, 0, -1); ``latency``: per
    endpoint, (seconds summed, reads).
    """

    ai: Mapping[int, int] = field(default_factory=dict)
    rad: Mapping[int, int] = field(default_factory=dict)
    pairs: Mapping[tuple[int, int], int] = field(default_factory=dict)
    reviews: Mapping[int, int] = field(default_factory=dict)
    latency: Mapping[str, tuple[float, int]] = field(default_factory=dict)

    def __add__(self, other: Figures) -> Figures:
        def add(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}

        latency = {e: (self.latency.get(e, (0.0, 0))[0] + other.latency.get(e, (0.0, 0))[0],
                       self.latency.get(e, (0.0, 0))[1] + other.latency.get(e, (0.0, 0))[1])
                   for e in self.latency.keys() | other.latency.keys()}
        return Figures(add(self.ai, other.ai), add(self.rad, other.rad),
                       add(self.pairs, other.pairs), add(self.reviews, other.reviews), latency)

    def severity(self, source: str) -> dict[int, int]:
        """Reports of ``source`` (ai or rad) by severity -1..10, zeros included."""
        counts = self.ai if source == "ai" else self.rad
        return {s: counts.get(s, 0) for s in range(-1, 11)}

    def confusion(self, threshold: int) -> Confusion:
        """TP/TN/FP/FN and not assessed of the units with both reports at ``threshold``."""
        return counted_confusion(self.pairs, threshold)

    def review_counts(self) -> dict[str, int]:
        """AI reads reviewed correct, incorrect, and not reviewed."""
        counts = dict.fromkeys(REVIEW_NAMES.values(), 0)
        for verdict, n in self.reviews.items():
            counts[REVIEW_NAMES.get(verdict, "not_reviewed")] += n
        return counts

    def model(self) -> dict[str, dict[str, float]]:
        """Average model latency (seconds) and read count per endpoint."""
        return {endpoint: {"avg_seconds": round(seconds / n, 3) if n else 0.0, "reports": n}
                for endpoint, (seconds, n) in sorted(self.latency.items()) if n}
