"""Reconciliation: resolve references, build, apply, prune, report status.

Every Kubernetes call goes through an :class:`Applier` (``apply.py`` has the real one;
tests pass a recording one). A spec that cannot be built applies nothing (no partial
state), sets ``Degraded`` with the reason and records a Kubernetes Event.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from xrayvision_operator import build
from xrayvision_operator.build import COMPONENTS, Obj, Resolved, SpecError
from xrayvision_operator.status import condition, deployment_ready, xrayvision_status

log = logging.getLogger(__name__)

CNPG_CRD = "clusters.postgresql.cnpg.io"
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
KEDA_CRD = "scaledobjects.keda.sh"
MODEL_REVISION = "xrayvision.io/model-revision"
# Kinds the operator creates for an XRayVision; owned objects of these kinds that are no
# longer desired are deleted.
PRUNABLE = (("v1", "ConfigMap"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"),
            ("apps/v1", "Deployment"), ("batch/v1", "Job"),
            ("policy/v1", "PodDisruptionBudget"), ("networking.k8s.io/v1", "Ingress"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
            ("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject"),
            ("postgresql.cnpg.io/v1", "Cluster"))


class Applier(Protocol):
    """What reconciliation needs of the API server."""

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply (field manager xrayvision-operator, conflicts forced)."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """The live object; None on 404."""

    def owned(self, owner: Obj, api_version: str, kind: str) -> list[Obj]:
        """Live objects of a kind labelled as managed for ``owner``."""

    def delete(self, obj: Obj) -> None:
        """Deletes; a 404 is not an error."""

    def crd_exists(self, name: str) -> bool: ...

    def list(self, api_version: str, kind: str, namespace: str) -> list[Obj]: ...

    def annotate(self, obj: Obj, annotations: dict[str, str]) -> None: ...

    def event(self, obj: Obj, reason: str, message: str, warning: bool = False) -> None: ...

    def patch_status(self, obj: Obj, status: dict) -> None:
        """Writes ``status`` through the status subresource."""


def _key(obj: Obj) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def resolve_endpoint(ref: Obj | None, namespace: str, applier: Applier,
                     role: str) -> tuple[str, str]:
    """(url, model) of a spec.model.primary/secondary reference; raises SpecError."""
    if not ref:
        return "", ""
    if ref.get("url"):
        return ref["url"], ref.get("model", "")
    name = ref.get("modelEndpoint", "")
    mep = applier.get(build.API_VERSION, "ModelEndpoint", namespace, name)
    if mep is None:
        raise SpecError(f"spec.model.{role}: ModelEndpoint {name!r} does not exist in "
                        f"namespace {namespace}")
    spec = mep.get("spec") or {}
    url = spec.get("url") or (build.vllm_url(mep) if spec.get("vllm") else "")
    return url, build.served_model(mep)


def resolve(xrv: Obj, applier: Applier) -> tuple[Resolved, list[Obj]]:
    """What the builders need from the cluster, and extra objects (a CloudNativePG
    Cluster when the database comes from there). Raises SpecError."""
    spec = xrv.get("spec") or {}
    ns, name = xrv["metadata"]["namespace"], xrv["metadata"]["name"]
    model = spec.get("model") or {}
    primary = resolve_endpoint(model.get("primary"), ns, applier, "primary")
    secondary = resolve_endpoint(model.get("secondary"), ns, applier, "secondary")
    extra: list[Obj] = []
    ref = (spec.get("database") or {}).get("secretRef")
    if ref:
        database = (ref["name"], ref.get("key", "url"))
    elif applier.crd_exists(CNPG_CRD):
        extra.append(cnpg_cluster(xrv))
        database = (f"{name}-db-app", "uri")
    else:
        raise SpecError("no database: set spec.database.secretRef to a Secret with the "
                        "PostgreSQL URL, or install CloudNativePG so the operator can "
                        "create one")
    return Resolved(primary_url=primary[0], primary_model=primary[1],
                    secondary_url=secondary[0], secondary_model=secondary[1],
                    database_secret=database,
                    service_monitors=applier.crd_exists(SERVICE_MONITOR_CRD),
                    keda=applier.crd_exists(KEDA_CRD)), extra


def cnpg_cluster(xrv: Obj) -> Obj:
    name = xrv["metadata"]["name"]
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
            "metadata": build.metadata(xrv, f"{name}-db", "database"),
            "spec": {"instances": 2, "storage": {"size": "20Gi"},
                     "bootstrap": {"initdb": {"database": "xrayvision", "owner": "xrayvision"}}}}


def _job_done(job: Obj | None) -> bool:
    return bool(job and (job.get("status") or {}).get("succeeded"))


def reconcile_xrayvision(xrv: Obj, applier: Applier) -> dict[str, Any]:
    """Applies the desired state of one XRayVision and returns its status."""
    meta = xrv["metadata"]
    generation = int(meta.get("generation", 1))
    previous = (xrv.get("status") or {})
    try:
        resolved, extra = resolve(xrv, applier)
        desired = extra + build.build_xrayvision(xrv, resolved)
    except SpecError as exc:
        message = str(exc)
        if (previous.get("conditions") or [{}])[-1].get("message") != message:
            applier.event(xrv, "InvalidSpec", message, warning=True)
        log.warning("invalid XRayVision spec", extra={"resource": meta["name"], "error": message})
        status = xrayvision_status(generation, {}, "", "", {}, error=message)
        return {**previous, **status}
    job = next(o for o in desired if o["kind"] == "Job")
    applier.apply(job)
    migrated = _job_done(applier.get("batch/v1", "Job", meta["namespace"],
                                     job["metadata"]["name"]))
    for obj in desired:
        if obj is job:
            continue
        live = applier.get(obj["apiVersion"], obj["kind"], meta["namespace"],
                           obj["metadata"]["name"])
        if obj["kind"] == "Deployment" and not migrated:
            if live is not None:
                continue  # keep the running version until the schema is migrated
            obj = {**obj, "spec": {**obj["spec"], "replicas": 0}}  # created, not started
        if not build.covers(live, obj):  # unchanged objects cost no write
            applier.apply(obj)
    wanted = {_key(o) for o in desired}
    for api_version, kind in PRUNABLE:
        for live in applier.owned(xrv, api_version, kind):
            if _key({**live, "apiVersion": api_version, "kind": kind}) not in wanted:
                applier.delete({**live, "apiVersion": api_version, "kind": kind})
    components = {}
    for component in COMPONENTS:
        name = f"{meta['name']}-{component}"
        if any(o["kind"] == "Deployment" and o["metadata"]["name"] == name for o in desired):
            components[component] = deployment_ready(
                applier.get("apps/v1", "Deployment", meta["namespace"], name))
    status = xrayvision_status(
        generation, components, dicom_endpoint(xrv, applier), web_url(xrv),
        {"primary": resolved.primary_url, "secondary": resolved.secondary_url})
    if not migrated:
        status["conditions"][1] = condition(
            "Progressing", True, "Migrating", "waiting for the schema migration Job",
            generation)
    return status


def dicom_endpoint(xrv: Obj, applier: Applier) -> str:
    """host:port of the DICOM Service (the load balancer's address once it has one)."""
    meta = xrv["metadata"]
    svc = applier.get("v1", "Service", meta["namespace"], f"{meta['name']}-dicom")
    port = ((xrv.get("spec") or {}).get("dicom") or {}).get("port", 11112)
    ingress = (((svc or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress")
    if ingress:
        host = ingress[0].get("ip") or ingress[0].get("hostname", "")
        return f"{host}:{port}"
    return f"{meta['name']}-dicom.{meta['namespace']}.svc:{port}"


def web_url(xrv: Obj) -> str:
    web = (xrv.get("spec") or {}).get("web") or {}
    if web.get("host"):
        return f"{'https' if web.get('tlsSecretName') else 'http'}://{web['host']}"
    meta = xrv["metadata"]
    return f"http://{meta['name']}-web.{meta['namespace']}.svc"


# --- ModelEndpoint -----------------------------------------------------------------------


def model_revision(mep: Obj) -> str:
    spec = mep.get("spec") or {}
    text = json.dumps([spec.get("url"), build.served_model(mep), bool(spec.get("vllm"))])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def reconcile_model_endpoint(mep: Obj, applier: Applier,
                             probe: Callable[[str], bool]) -> dict[str, Any]:
    """Applies a managed vLLM server (or probes an external URL), tells the XRayVisions
    that use this endpoint, and returns the status."""
    meta = mep["metadata"]
    generation = int(meta.get("generation", 1))
    spec = mep.get("spec") or {}
    desired = build.build_model_endpoint(mep)
    for obj in desired:
        applier.apply(obj)
    if spec.get("vllm"):
        url = build.vllm_url(mep)
        ready, desired_n = deployment_ready(applier.get(
            "apps/v1", "Deployment", meta["namespace"], f"{meta['name']}-vllm"))
        ok = desired_n > 0 and ready >= desired_n
        message = f"{ready}/{desired_n} vLLM replicas ready"
        kind = "vllm"
    else:
        url = spec.get("url", "")
        ok = probe(url)
        ready = 1 if ok else 0
        message = "GET /v1/models answered" if ok else "GET /v1/models did not answer 200"
        kind = "url"
    revision = model_revision(mep)
    for xrv in applier.list(build.API_VERSION, "XRayVision", meta["namespace"]):
        model = (xrv.get("spec") or {}).get("model") or {}
        refs = {(model.get(r) or {}).get("modelEndpoint") for r in ("primary", "secondary")}
        annotations = (xrv["metadata"].get("annotations") or {})
        if meta["name"] in refs and annotations.get(MODEL_REVISION) != revision:
            applier.annotate(xrv, {MODEL_REVISION: revision})  # triggers its update
    return {"type": kind, "url": url, "model": build.served_model(mep),
            "observedGeneration": generation, "readyReplicas": ready,
            "conditions": [condition("Ready", ok, "Ready" if ok else "NotReady", message,
                                     generation),
                           condition("Progressing", not ok, "Starting" if not ok else "Settled",
                                     message, generation),
                           condition("Degraded", False, "AsExpected", "", generation)]}
