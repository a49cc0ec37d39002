"""Conditions and status (pure): ``Ready``, ``Progressing``, ``Degraded``, each with a
reason, a message and the generation it describes; ``lastTransitionTime`` changes only
when a condition's status does (:func:`merge_conditions`).

``Ready`` of an XRayVision is True only when the spec of the current generation was
applied, its schema migration Job succeeded and every Deployment has all its replicas
available in the current revision: ``kubectl wait --for=condition=Ready`` then means
"the new version serves".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from xrayvision_operator.build import Obj

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason,
            "message": message[:1024], "observedGeneration": generation}


def merge_conditions(old: list[Obj] | None, new: list[Obj],
                     at: str | None = None) -> list[Obj]:
    """The new conditions, keeping ``lastTransitionTime`` where the status is unchanged."""
    at = at or now()
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        keep = before is not None and before.get("status") == cond["status"]
        merged.append({**cond, "lastTransitionTime":
                       (before or {}).get("lastTransitionTime", at) if keep else at})
    return merged


def condition_of(status: Obj | None, kind: str) -> Obj:
    """The condition of that type in a status; {} when absent."""
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == kind),
                {})


def deployment_ready(deployment: Obj | None,
                     desired: int | None = None) -> tuple[int, int]:
    """(available replicas of the current revision, desired replicas) of a Deployment as
    the API reports it. ``desired`` is what the operator asked for (the live
    ``spec.replicas`` when None). A Deployment whose controller has not yet seen its
    latest spec counts no replica as available."""
    if desired is None:
        desired = int(((deployment or {}).get("spec") or {}).get("replicas", 1))
    if not deployment:
        return 0, desired
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return 0, desired
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    return min(available, updated, desired), desired


@dataclass(frozen=True)
class Failure:
    """Why the current spec is not applied: a reason (InvalidSpec, ImmutableField,
    ApplyFailed, MigrationFailed) and a message saying what to change."""

    reason: str
    message: str


def xrayvision_status(generation: int, components: dict[str, tuple[int, int]],
                      dicom: str, web_url: str, model: dict[str, str], *,
                      migrated: bool = True, failure: Failure | None = None,
                      previous: list[Obj] | None = None,
                      at: str | None = None) -> Obj:
    """The whole status of an XRayVision from what was applied and what runs;
    ``previous`` conditions keep their transition times where unchanged."""
    ready = sum(r for r, _ in components.values())
    desired = sum(d for _, d in components.values())
    status: Obj = {
        "observedGeneration": generation,
        "componentsReady": f"{ready}/{desired}",
        "components": {name: {"replicas": d, "readyReplicas": r}
                       for name, (r, d) in sorted(components.items())},
        "dicomEndpoint": dicom, "webUrl": web_url, "model": model,
    }
    if failure is not None:
        message = failure.message
        conditions = [condition("Ready", False, failure.reason, message, generation),
                      condition("Progressing", False, failure.reason, message, generation),
                      condition("Degraded", True, failure.reason, message, generation)]
    elif not migrated:
        message = "waiting for the schema migration Job"
        conditions = [condition("Ready", False, "Migrating", message, generation),
                      condition("Progressing", True, "Migrating", message, generation),
                      condition("Degraded", False, "AsExpected", "", generation)]
    elif components and ready >= desired > 0:
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
    status["conditions"] = merge_conditions(previous, conditions, at)
    return status


def with_error(previous: Obj | None, generation: int, message: str,
               at: str | None = None) -> list[Obj]:
    """The conditions after a reconcile that raised (kopf retries it): Degraded with
    reason ReconcileError and the error; Ready and Progressing as they were."""
    kept = [c for c in (previous or {}).get("conditions") or [] if c.get("type") != "Degraded"]
    return merge_conditions((previous or {}).get("conditions"), [
        *kept, condition("Degraded", True, "ReconcileError", message, generation)], at)
