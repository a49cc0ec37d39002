"""Agreement between the AI's and the radiologist's severities (pure: no I/O).

At a severity threshold T, a report is positive when its severity >= T and negative when
0 <= severity < T; -1 means "not assessed" and puts the exam in no class: it is counted
apart (``not_assessed``), never as a negative. With the radiologist as the reference:
TP both positive, TN both negative, FP AI positive only, FN radiologist positive only.
Ratios with a zero denominator are None ("no data"), not 0.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
    counts = dict.fromkeys((*CLASSES, None), 0)
    for ai, rad in pairs:
        counts[classify(ai, rad, threshold)] += 1
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
