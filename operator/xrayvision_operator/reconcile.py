"""Reconciliation: resolve references, build, apply, prune, report status.

Every Kubernetes call goes through an :class:`Applier` (``apply.py`` has the real one;
tests pass a recording one). A spec that cannot be built, or that would change a field
the API server keeps immutable, applies nothing (no partial state); that, and an apply
the API server refuses, sets ``Degraded`` with the reason and records a Warning Event.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from xrayvision_operator import build
from xrayvision_operator.build import COMPONENTS, Obj, Resolved, SpecError
from xrayvision_operator.status import (
    Failure,
    condition,
    condition_of,
    deployment_ready,
    merge_conditions,
    xrayvision_status,
)

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

    def list_in(self, api_version: str, kind: str,
                namespaces: builtins.list[str]) -> builtins.list[Obj]:
        """Objects of a kind in those namespaces (all when the list is empty)."""

    def annotate(self, obj: Obj, annotations: dict[str, str]) -> None: ...

    def event(self, obj: Obj, reason: str, message: str, warning: bool = False) -> None: ...

    def patch_status(self, obj: Obj, status: Obj) -> None:
        """Writes ``status`` through the status subresource."""


def _key(obj: Obj) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def resolve_endpoint(ref: Obj | None, namespace: str, applier: Applier,
                     role: str) -> tuple[str, str, int]:
    """(url, model, images per request) of a spec.model.primary/secondary reference (the
    images a managed vLLM accepts in one request; 0 when unknown: an external server);
    raises SpecError."""
    if not ref:
        return "", "", 0
    if ref.get("url"):
        return ref["url"], ref.get("model", ""), 0
    name = ref.get("modelEndpoint", "")
    mep = applier.get(build.API_VERSION, "ModelEndpoint", namespace, name)
    if mep is None:
        raise SpecError(f"spec.model.{role}: ModelEndpoint {name!r} does not exist in "
                        f"namespace {namespace}")
    spec = mep.get("spec") or {}
    url = spec.get("url") or (build.vllm_url(mep) if spec.get("vllm") else "")
    images = build.images_per_prompt(mep) if spec.get("vllm") and not spec.get("url") else 0
    return url, build.served_model(mep), images


def require_secret(applier: Applier, namespace: str, field: str, name: str,
                   keys: list[str]) -> None:
    """Raises SpecError unless Secret ``name`` exists with those keys (pods referencing
    a missing one would never start: CreateContainerConfigError). Values are not read."""
    secret = applier.get("v1", "Secret", namespace, name)
    if secret is None:
        raise SpecError(f"{field}: Secret {name!r} does not exist in namespace {namespace}")
    present = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
    missing = [k for k in keys if k not in present]
    if missing:
        raise SpecError(f"{field}: Secret {name!r} has no key {', '.join(map(repr, missing))}")


def resolve(xrv: Obj, applier: Applier) -> tuple[Resolved, list[Obj]]:
    """What the builders need from the cluster, and extra objects (a CloudNativePG
    Cluster when the database comes from there). Raises SpecError."""
    spec = xrv.get("spec") or {}
    ns, name = xrv["metadata"]["namespace"], xrv["metadata"]["name"]
    model = spec.get("model") or {}
    primary = resolve_endpoint(model.get("primary"), ns, applier, "primary")
    secondary = resolve_endpoint(model.get("secondary"), ns, applier, "secondary")
    shadow = resolve_endpoint(model.get("shadow"), ns, applier, "shadow")
    extra: list[Obj] = []
    ref = (spec.get("database") or {}).get("secretRef")
    if ref:
        database = (ref["name"], ref.get("key", "url"))
        require_secret(applier, ns, "spec.database.secretRef", database[0], [database[1]])
    elif applier.crd_exists(CNPG_CRD):
        extra.append(cnpg_cluster(xrv))
        database = (f"{name}-db-app", "uri")
    else:
        raise SpecError("no database: set spec.database.secretRef to a Secret with the "
                        "PostgreSQL URL, or install CloudNativePG so the operator can "
                        "create one")
    creds = (spec.get("fhir") or {}).get("credentialsSecret")
    if creds:
        require_secret(applier, ns, "spec.fhir.credentialsSecret", creds["name"],
                       ["username", "password"])
    users = (spec.get("web") or {}).get("usersSecret")
    if users:
        require_secret(applier, ns, "spec.web.usersSecret", users["name"], [])
    limits = [n for n in (primary[2], secondary[2]) if n]
    return Resolved(primary_url=primary[0], primary_model=primary[1],
                    secondary_url=secondary[0], secondary_model=secondary[1],
                    shadow_url=shadow[0], shadow_model=shadow[1],
                    max_images=min(limits) if limits else 0,
                    database_secret=database,
                    service_monitors=applier.crd_exists(SERVICE_MONITOR_CRD),
                    keda=applier.crd_exists(KEDA_CRD)), extra


def cnpg_cluster(xrv: Obj) -> Obj:
    name = xrv["metadata"]["name"]
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
            "metadata": build.metadata(xrv, f"{name}-db", "database"),
            "spec": {"instances": 2, "storage": {"size": "20Gi"},
                     "bootstrap": {"initdb": {"database": "xrayvision", "owner": "xrayvision"}}}}


def migration_state(job: Obj | None) -> tuple[bool, str]:
    """(succeeded, failure message) of the migration Job; (False, "") while it runs."""
    status = (job or {}).get("status") or {}
    if status.get("succeeded"):
        return True, ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            name = ((job or {}).get("metadata") or {}).get("name", "")
            return False, (f"the schema migration Job {name} failed "
                           f"({cond.get('reason', '')}: {cond.get('message', '')}); the "
                           "running version keeps serving. See its pod's log")
    return False, ""


# Fields of a live object that the API server refuses to change (422 "field is
# immutable"), as (kind, path in the object, path in the custom resource's spec).
IMMUTABLE = (
    ("PersistentVolumeClaim", ("spec", "accessModes"), "accessMode"),
    ("PersistentVolumeClaim", ("spec", "storageClassName"), "storageClassName"),
)


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def immutable_changes(desired: list[Obj], live: dict[tuple[str, str, str], Obj]) -> list[str]:
    """What the desired objects would change in a field the API server keeps immutable
    (pure): one sentence per field, naming the object, both values and the way out."""
    found = []
    for obj in desired:
        current = live.get(_key(obj))
        if current is None:
            continue
        for kind, path, field in IMMUTABLE:
            want, have = _at(obj, path), _at(current, path)
            if obj["kind"] != kind or want is None or want == have:
                continue
            found.append(
                f"{'.'.join(path)} of {kind} {obj['metadata']['name']} is {have!r} and cannot "
                f"change to {want!r} (immutable; set the {field} back, or delete the "
                f"{kind} and its data to have it made anew)")
    return found


def _failed(owner: Obj, applier: Applier, previous: Obj, failure: Failure) -> None:
    """Logs a failure (WARNING) and records it as a Warning Event, once: while the
    Degraded condition already says the same, only a DEBUG line."""
    meta = owner["metadata"]
    degraded = condition_of(previous, "Degraded")
    new = degraded.get("status") != "True" or degraded.get("message") != failure.message[:1024]
    log.log(logging.WARNING if new else logging.DEBUG, "%s %s/%s: %s: %s", owner["kind"],
            meta.get("namespace"), meta["name"], failure.reason, failure.message)
    if new:
        applier.event(owner, failure.reason, failure.message, warning=True)


def api_failure(exc: ApiException, obj: Obj) -> Failure | None:
    """A Failure for an answer that retrying the same request cannot change (a 4xx other
    than conflict and throttling); None for the others (kopf retries them)."""
    if exc.status is None or not 400 <= exc.status < 500 or exc.status in (409, 429):
        return None
    try:
        detail = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        detail = exc.reason
    return Failure("ApplyFailed", f"{obj['kind']} {obj['metadata']['name']}: the API server "
                                  f"answered {exc.status}: {detail}")


def reconcile_xrayvision(xrv: Obj, applier: Applier) -> dict[str, Any]:
    """Applies the desired state of one XRayVision and returns its status.

    A spec that cannot be built, that would change an immutable field, or that the API
    server refuses (4xx) applies nothing more, returns Ready=False/Degraded=True with the
    reason and records a Warning Event; other API errors raise (kopf retries)."""
    meta = xrv["metadata"]
    generation = int(meta.get("generation", 1))
    previous = xrv.get("status") or {}
    conditions = previous.get("conditions")

    def failed(failure: Failure) -> dict[str, Any]:
        _failed(xrv, applier, previous, failure)
        status = xrayvision_status(generation, {}, "", "", {}, failure=failure,
                                   previous=conditions)
        return {**previous, **{k: v for k, v in status.items()
                               if k in ("conditions", "observedGeneration")}}

    target = xrv
    try:
        try:
            resolved, extra = resolve(xrv, applier)
            desired = extra + build.build_xrayvision(xrv, resolved)
        except SpecError as exc:
            return failed(Failure("InvalidSpec", str(exc)))
        found = {_key(o): applier.get(o["apiVersion"], o["kind"], meta["namespace"],
                                      o["metadata"]["name"]) for o in desired}
        live = {k: v for k, v in found.items() if v is not None}
        changes = immutable_changes(desired, live)
        if changes:
            return failed(Failure("ImmutableField", "; ".join(changes)))
        job = next(o for o in desired if o["kind"] == "Job")
        target = job
        if _key(job) not in live:
            live[_key(job)] = applier.apply(job)
        migrated, migration_error = migration_state(live[_key(job)])
        for obj in desired:
            if obj is job:
                continue
            target = obj
            current = live.get(_key(obj))
            if obj["kind"] == "Deployment" and not migrated:
                if current is not None:
                    continue  # keep the running version until the schema is migrated
                obj = {**obj, "spec": {**obj["spec"], "replicas": 0}}  # created, not started
            if not build.covers(current, obj):  # unchanged objects cost no write
                live[_key(obj)] = applier.apply(obj)
        wanted = {_key(o) for o in desired}
        for api_version, kind in PRUNABLE:
            for owned in applier.owned(xrv, api_version, kind):
                target = {**owned, "apiVersion": api_version, "kind": kind}
                if _key(target) not in wanted:
                    applier.delete(target)
    except ApiException as exc:
        failure = api_failure(exc, target)
        if failure is None:
            raise
        return failed(failure)
    components = {}
    for component in COMPONENTS:
        name = f"{meta['name']}-{component}"
        built = next((o for o in desired
                      if o["kind"] == "Deployment" and o["metadata"]["name"] == name), None)
        if built is not None:
            current = live.get(_key(built))
            components[component] = deployment_ready(
                current, built["spec"].get("replicas"))
    failure = Failure("MigrationFailed", migration_error) if migration_error else None
    if failure is not None:
        _failed(xrv, applier, previous, failure)
    return xrayvision_status(
        generation, components, dicom_endpoint(xrv, applier), web_url(xrv),
        {"primary": resolved.primary_url, "secondary": resolved.secondary_url},
        migrated=migrated, failure=failure, previous=conditions)


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


def probes_condition(seen: list[tuple[str, str, list[Obj] | None]], url: str,
                     generation: int) -> Obj:
    """``ProbesPassing`` from what the XRayVisions using the endpoint found (pure):
    ``seen`` is (XRayVision name, as which endpoint, its stored verdicts or None when it
    did not answer). False when any failed, True when all that judged it passed, Unknown
    when none did (not used, not probed yet, not reachable). Verdicts reached on another
    URL (before a change) are ignored."""
    failing, passing, unknown = [], [], []
    for name, role, verdicts in seen:
        verdict = next((v for v in verdicts or [] if v.get("endpoint") == role
                        and base_url(str(v.get("url", ""))) == base_url(url)), None)
        where = f"{name} ({role})"
        if verdict is None or verdict.get("passed") is None:
            unknown.append(where + (": not reachable" if verdicts is None else
                                    ": not probed yet"))
        elif verdict["passed"]:
            passing.append(f"{where} at {verdict.get('at', '')}")
        else:
            failing.append(f"{where}: {verdict.get('reason', '')}")
    cond = condition("ProbesPassing", not failing and bool(passing),
                     "ProbesFailing" if failing else "ProbesPassing" if passing
                     else "NotProbed",
                     "; ".join(failing) if failing else
                     ("passed the known-answer probes of " + "; ".join(passing)) if passing
                     else ("; ".join(unknown) or "no XRayVision reads with this endpoint"),
                     generation)
    if not failing and not passing:
        cond["status"] = "Unknown"
    return cond


def base_url(url: str) -> str:
    """A model URL as the runtime keeps it: no trailing slash, no ``/v1``."""
    return url.rstrip("/").removesuffix("/v1")


def reconcile_model_endpoint(mep: Obj, applier: Applier, probe: Callable[[str], bool],
                             verdicts: Callable[[Obj], list[Obj] | None] = lambda xrv: None
                             ) -> dict[str, Any]:
    """Applies a managed vLLM server (or probes an external URL), tells the XRayVisions
    that use this endpoint, and returns the status with ``ProbesPassing`` from each such
    XRayVision's known-answer probe verdicts (``verdicts(xrv)``: None when it does not
    answer). Failures as for an XRayVision."""
    meta = mep["metadata"]
    generation = int(meta.get("generation", 1))
    spec = mep.get("spec") or {}
    previous = mep.get("status") or {}
    desired = build.build_model_endpoint(mep)
    live = {_key(o): applier.get(o["apiVersion"], o["kind"], meta["namespace"],
                                 o["metadata"]["name"]) for o in desired}
    failure = None
    changes = immutable_changes(desired, {k: v for k, v in live.items() if v is not None})
    if changes:
        failure = Failure("ImmutableField", "; ".join(changes))
    else:
        for obj in desired:
            if build.covers(live[_key(obj)], obj):
                continue
            try:
                live[_key(obj)] = applier.apply(obj)
            except ApiException as exc:
                failure = api_failure(exc, obj)
                if failure is None:
                    raise
                break
    if spec.get("vllm"):
        url = build.vllm_url(mep)
        ready, desired_n = deployment_ready(live.get(
            ("apps/v1", "Deployment", f"{meta['name']}-vllm")))
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
    users: list[tuple[Obj, str]] = []  # (XRayVision, as which endpoint)
    for xrv in applier.list(build.API_VERSION, "XRayVision", meta["namespace"]):
        model = (xrv.get("spec") or {}).get("model") or {}
        roles = [r for r in ("primary", "secondary", "shadow")
                 if (model.get(r) or {}).get("modelEndpoint") == meta["name"]]
        annotations = (xrv["metadata"].get("annotations") or {})
        if roles and annotations.get(MODEL_REVISION) != revision:
            applier.annotate(xrv, {MODEL_REVISION: revision})  # triggers its update
        users += [(xrv, role) for role in roles]
    if failure is not None:
        _failed(mep, applier, previous, failure)
        conditions = [condition("Ready", False, failure.reason, failure.message, generation),
                      condition("Progressing", False, failure.reason, failure.message,
                                generation),
                      condition("Degraded", True, failure.reason, failure.message,
                                generation)]
    else:
        conditions = [condition("Ready", ok, "Ready" if ok else "NotReady", message,
                                generation),
                      condition("Progressing", not ok, "Starting" if not ok else "Settled",
                                message, generation),
                      condition("Degraded", False, "AsExpected", "", generation)]
    conditions.append(probes_condition(
        [(xrv["metadata"]["name"], role, verdicts(xrv)) for xrv, role in users], url,
        generation))
    return {"type": kind, "url": url, "model": build.served_model(mep),
            "observedGeneration": generation, "readyReplicas": ready,
            "conditions": merge_conditions(previous.get("conditions"), conditions)}
