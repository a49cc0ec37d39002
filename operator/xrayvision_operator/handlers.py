"""kopf handlers, registered with their dependencies bound (:func:`register`).

XRayVision: create, update, resume and a timer (drift repair and status refresh) all run
:func:`reconcile.reconcile_xrayvision`; changes of the Deployments it owns refresh it
too. ModelEndpoint: the same for :func:`reconcile.reconcile_model_endpoint`, which also
annotates the XRayVisions using it so they reconcile with the new URL. Status is written
to the status subresource only (kopf's ``patch.status``). Handlers are idempotent: each
run applies the whole desired state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kopf

from xrayvision_operator import metrics
from xrayvision_operator.build import GROUP, MANAGER, VERSION
from xrayvision_operator.reconcile import (
    Applier,
    reconcile_model_endpoint,
    reconcile_xrayvision,
)

RESYNC_SECONDS = 60.0


def _plain(body: Any) -> dict:
    return {"apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": body.get("kind"), "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


def _timed(kind: str, fn: Callable[[], dict]) -> dict:
    started = time.perf_counter()
    try:
        result = fn()
    except Exception:
        metrics.RECONCILE_ERRORS.labels(kind).inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(kind).inc()
    return result


def register(registry: kopf.OperatorRegistry, applier: Applier,
             probe: Callable[[str], bool]) -> dict[str, Callable]:
    """Registers the handlers on ``registry``; returns them by name (tests call them)."""

    def xrayvision(body, patch, **_) -> None:
        status = _timed("XRayVision", lambda: reconcile_xrayvision(_plain(body), applier))
        patch.status.update(status)

    def model_endpoint(body, patch, **_) -> None:
        status = _timed("ModelEndpoint",
                        lambda: reconcile_model_endpoint(_plain(body), applier, probe))
        patch.status.update(status)

    def child_changed(body, **_) -> None:
        """A Deployment of ours changed: refresh its owner's status (and repair it)."""
        meta = body.get("metadata") or {}
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") != "XRayVision":
                continue
            owner = applier.get(f"{GROUP}/{VERSION}", "XRayVision", meta.get("namespace", ""),
                                ref["name"])
            if owner is None:
                return
            status = _timed("XRayVision", lambda owner=owner: reconcile_xrayvision(
                owner, applier))
            applier.patch_status(owner, status)

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(GROUP, VERSION, "xrayvisions", registry=registry)(xrayvision)
        decorator(GROUP, VERSION, "modelendpoints", registry=registry)(model_endpoint)
    kopf.timer(GROUP, VERSION, "xrayvisions", interval=RESYNC_SECONDS, idle=RESYNC_SECONDS,
               registry=registry)(xrayvision)
    kopf.timer(GROUP, VERSION, "modelendpoints", interval=RESYNC_SECONDS,
               registry=registry)(model_endpoint)
    kopf.on.event("apps", "v1", "deployments", registry=registry,
                  labels={"app.kubernetes.io/managed-by": MANAGER})(child_changed)
    return {"xrayvision": xrayvision, "model_endpoint": model_endpoint,
            "child_changed": child_changed}
