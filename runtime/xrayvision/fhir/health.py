"""What is known of the connection to the HIS: the poller's last good cycle, its last
error and the start-up self-check's finding (pure; stored as one JSON state row by the
poller, read by the web role for ``/api/config`` and the dashboard's FHIR pill)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

HEALTH_KEY = "fhir.health"


@dataclass(frozen=True)
class FhirHealth:
    last_success: str | None = None  # ISO 8601 instant of the last cycle without errors
    last_error: str = ""  # the last failure in words: status and OperationOutcome text
    last_error_at: str | None = None
    warning: str = ""  # the self-check's finding: credentials or identifier system wrong

    @property
    def ok(self) -> bool:
        """No warning, and no error since the last good cycle."""
        recovered = self.last_error_at is None or (
            self.last_success is not None and self.last_success > self.last_error_at)
        return not self.warning and recovered

    def succeeded(self, at: str) -> FhirHealth:
        return dataclasses.replace(self, last_success=at)

    def failed(self, at: str, error: str) -> FhirHealth:
        return dataclasses.replace(self, last_error=error[:500], last_error_at=at)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ok": self.ok}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> FhirHealth:
        """The stored health; an empty one for none or an unreadable row."""
        try:
            data = json.loads(text or "{}")
        except ValueError:
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields}) if isinstance(
            data, dict) else cls()
