"""kopf handlers, registered with their dependencies bound (:func:`register`).

XRayVision: create, update and resume run :func:`reconcile.reconcile_xrayvision`; so
does any change (or deletion) of an object it owns (drift repair, and status as its
Deployments and migration Job progress), and :func:`resync` every
:data:`RESYNC_SECONDS`. ModelEndpoint: the same with
:func:`reconcile.reconcile_model_endpoint`, which also annotates the XRayVisions using it
so they reconcile with the new URL. Status is written through the status subresource
only. Handlers are idempotent: each run applies the whole desired state; runs for one
object never overlap (a lock per object).

No handler needs a finalizer (kopf puts one on a resource that has deletion handlers,
timers or daemons): the children carry owner references, so the API server's garbage
collector removes them, and deleting a custom resource or its namespace never waits for
the operator. That is why the periodic resync is one task of the operator's
(:func:`resync`), not a kopf timer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf

from xrayvision_operator import metrics
from xrayvision_operator.build import API_VERSION, GROUP, MANAGER, VERSION
from xrayvision_operator.reconcile import (
    Applier,
    reconcile_model_endpoint,
    reconcile_xrayvision,
)
from xrayvision_operator.status import with_error

log = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0
# Kinds of the objects the operator makes whose changes it watches; the optional kinds
# (ServiceMonitor, ScaledObject, ...) are repaired by the resync.
WATCHED_CHILDREN = (("apps", "v1", "deployments"), ("batch", "v1", "jobs"),
                    ("", "v1", "services"), ("", "v1", "configmaps"),
                    ("", "v1", "persistentvolumeclaims"))


def _plain(body: Any) -> dict[str, Any]:
    return {"apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": body.get("kind"), "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


def _timed(kind: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
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


class ObjectLocks:
    """One lock per custom resource, so that a handler, a child's event and the resync
    never reconcile the same object at once."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}

    def __call__(self, kind: str, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((kind, namespace, name), threading.Lock())


def register(registry: kopf.OperatorRegistry, applier: Applier,
             probe: Callable[[str], bool],
             verdicts: Callable[[dict[str, Any]], list[dict[str, Any]] | None]
             = lambda xrv: None) -> dict[str, Callable[..., Any]]:
    """Registers the handlers on ``registry``; returns them by name (tests and the
    resync call them)."""
    locks = ObjectLocks()
    # The status last computed for each object (by uid): the body a handler or a child's
    # event brings may have been read before that status was written, and a status that
    # old would post the same failure as a new Event once more.
    computed: dict[str, dict[str, Any]] = {}

    def reconcile(body: dict[str, Any]) -> dict[str, Any]:
        """Reconciles a custom resource (as the API server gave it); returns its status."""
        kind, meta = body.get("kind", ""), body["metadata"]
        with locks(kind, meta.get("namespace", ""), meta["name"]):
            uid = meta.get("uid", "")
            if uid in computed:
                body = {**body, "status": computed[uid]}
            if kind == "ModelEndpoint":
                status = _timed(kind, lambda: reconcile_model_endpoint(body, applier, probe,
                                                                   verdicts))
            else:
                status = _timed(kind, lambda: reconcile_xrayvision(body, applier))
            if uid:
                computed[uid] = status
            return status

    def handle(body: kopf.Body, patch: kopf.Patch) -> None:
        plain = _plain(body)
        try:
            status = reconcile(plain)
        except Exception as exc:
            # kopf retries and posts the failure as an Event; the status says it too
            generation = int(plain["metadata"].get("generation", 1))
            patch.status["conditions"] = with_error(plain["status"], generation,
                                                    f"{type(exc).__name__}: {exc}")
            raise
        patch.status.update(status)

    def xrayvision(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        handle(body, patch)

    def model_endpoint(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        handle(body, patch)

    def refresh(api_version: str, kind: str, namespace: str, name: str) -> None:
        """Reconciles the live object and writes its status; nothing when it is gone."""
        owner = applier.get(api_version, kind, namespace, name)
        if owner is None or (owner.get("metadata") or {}).get("deletionTimestamp"):
            return
        applier.patch_status(owner, reconcile(owner))

    def child_changed(body: kopf.Body, **_: Any) -> None:
        """An object the operator made changed or went away: reconcile its owner."""
        meta = body.get("metadata") or {}
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") in ("XRayVision", "ModelEndpoint") and \
                    ref.get("apiVersion") == API_VERSION:
                refresh(API_VERSION, ref["kind"], meta.get("namespace", ""), ref["name"])

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(GROUP, VERSION, "xrayvisions", registry=registry)(xrayvision)
        decorator(GROUP, VERSION, "modelendpoints", registry=registry)(model_endpoint)
    for group, version, plural in WATCHED_CHILDREN:
        kopf.on.event(group, version, plural, registry=registry,
                      labels={"app.kubernetes.io/managed-by": MANAGER})(child_changed)
    return {"xrayvision": xrayvision, "model_endpoint": model_endpoint,
            "child_changed": child_changed, "refresh": refresh}


async def resync(applier: Applier, refresh: Callable[[str, str, str, str], None],
                 namespaces: list[str], interval: float = RESYNC_SECONDS) -> None:
    """Every ``interval`` seconds, reconciles every XRayVision and ModelEndpoint in
    ``namespaces`` (all when empty): drift of kinds not watched, URL probes of external
    model endpoints. A failed round is logged and tried again at the next."""
    while True:
        await asyncio.sleep(interval)
        for kind in ("ModelEndpoint", "XRayVision"):
            try:
                items = await asyncio.to_thread(applier.list_in, API_VERSION, kind,
                                                namespaces)
            except Exception:  # noqa: BLE001 - the API server may be away; next round
                log.warning("resync: cannot list %s", kind, exc_info=True)
                continue
            for item in items:
                meta = item["metadata"]
                try:
                    await asyncio.to_thread(refresh, API_VERSION, kind, meta["namespace"],
                                            meta["name"])
                except Exception:  # noqa: BLE001 - one object's failure is not the others'
                    log.warning("resync of %s %s/%s failed", kind, meta["namespace"],
                                meta["name"], exc_info=True)
