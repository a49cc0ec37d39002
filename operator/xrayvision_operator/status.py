"""Conditions and status (pure): ``Ready``, ``Progressing``, ``Degraded``, each with a
reason, a message and the generation it describes; the transition time changes only when
the status does."""

from __future__ import annotations

import datetime as dt
from typing import Any

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason,
            "message": message[:1024], "observedGeneration": generation}


def merge_conditions(old: list[dict] | None, new: list[dict], at: str | None = None) -> list:
    """The new conditions, keeping ``lastTransitionTime`` where the status is unchanged."""
    at = at or now()
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        keep = before is not None and before.get("status") == cond["status"]
        merged.append({**cond, "lastTransitionTime":
                       before.get("lastTransitionTime", at) if keep else at})
    return merged


def deployment_ready(deployment: dict | None) -> tuple[int, int]:
    """(ready replicas, desired replicas) of a Deployment as the API reports it."""
    if not deployment:
        return 0, 0
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    return min(ready, desired), desired


def xrayvision_status(generation: int, components: dict[str, tuple[int, int]],
                      dicom: str, web_url: str, model: dict[str, str],
                      error: str = "") -> dict[str, Any]:
    """The whole status of an XRayVision from what was applied and what runs."""
    ready = sum(r for r, _ in components.values())
    desired = sum(d for _, d in components.values())
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "componentsReady": f"{ready}/{desired}",
        "components": {name: {"replicas": d, "readyReplicas": r}
                       for name, (r, d) in sorted(components.items())},
        "dicomEndpoint": dicom, "webUrl": web_url, "model": model,
    }
    if error:
        conditions = [condition("Ready", False, "InvalidSpec", error, generation),
                      condition("Progressing", False, "InvalidSpec", error, generation),
                      condition("Degraded", True, "InvalidSpec", error, generation)]
    elif components and ready >= desired:
        conditions = [condition("Ready", True, "AllReplicasReady",
                                f"{ready}/{desired} replicas ready", generation),
                      condition("Progressing", False, "Settled", "nothing to roll out",
                                generation),
                      condition("Degraded", False, "AsExpected", "", generation)]
    else:
        missing = [n for n, (r, d) in sorted(components.items()) if r < d]
        message = f"{ready}/{desired} replicas ready; waiting for {', '.join(missing)}"
        conditions = [condition("Ready", False, "ReplicasNotReady", message, generation),
                      condition("Progressing", True, "RollingOut", message, generation),
                      condition("Degraded", False, "AsExpected", "", generation)]
    status["conditions"] = conditions
    return status
