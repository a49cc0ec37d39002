"""Pure builders: an XRayVision or ModelEndpoint (as a dict, defaults applied by the API
server) -> the Kubernetes objects it stands for. No API calls; every object carries the
standard labels and an owner reference to its custom resource.

Secret values are never read here: Secrets are referenced with ``secretKeyRef`` only, so
nothing secret reaches a ConfigMap, an annotation or a status.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

GROUP, VERSION = "xrayvision.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGER = "xrayvision-operator"
COMPONENTS = ("ingest", "relay", "fhir", "web")
WEB_PORT = 8080  # http: dashboard/API, probes and /metrics of every role
CONFIG_HASH = "xrayvision.io/config-hash"
# Ingress annotations that keep dashboard WebSockets open for common controllers.
WEBSOCKET_ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
    "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
    "haproxy.router.openshift.io/timeout": "3600s",
    "traefik.ingress.kubernetes.io/service.serversscheme": "http",
}

Obj = dict[str, Any]  # a Kubernetes object, or part of one, as JSON


class SpecError(ValueError):
    """The spec cannot be built; the message says what to change."""


@dataclass(frozen=True)
class Resolved:
    """What the builders need from outside the spec: model URLs resolved from
    ModelEndpoints, the database Secret to use, which optional CRDs exist."""

    primary_url: str = ""
    primary_model: str = ""
    secondary_url: str = ""
    secondary_model: str = ""
    shadow_url: str = ""  # a model under evaluation: a copy of reads, never shown
    shadow_model: str = ""
    # images per request the managed vLLM endpoints accept (0: unknown, the app's default)
    max_images: int = 0
    database_secret: tuple[str, str] | None = None  # (name, key)
    service_monitors: bool = False
    keda: bool = False


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "xrayvision",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGER,
    }


def selector(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": component}


def owner_reference(owner: Obj) -> Obj:
    meta = owner["metadata"]
    return {"apiVersion": owner.get("apiVersion", API_VERSION), "kind": owner["kind"],
            "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def metadata(owner: Obj, name: str, component: str, **extra: Any) -> Obj:
    return {"name": name, "namespace": owner["metadata"]["namespace"],
            "labels": labels(owner["metadata"]["name"], component),
            "ownerReferences": [owner_reference(owner)], **extra}


def config_hash(*objects: Obj) -> str:
    text = json.dumps([o.get("data", o) for o in objects], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- XRayVision --------------------------------------------------------------------------


def _spec(xrv: Obj) -> Obj:
    return xrv.get("spec") or {}


def runtime_env(xrv: Obj, resolved: Resolved) -> dict[str, str]:
    """The runtime settings as XRAYVISION_* variables (no secrets)."""
    spec = _spec(xrv)
    dicom = spec.get("dicom") or {}
    model = spec.get("model") or {}
    env = {
        "XRAYVISION_SERVER_DATA_DIR": "/var/lib/xrayvision",
        "XRAYVISION_WEB_HOST": "0.0.0.0",  # noqa: S104 - a pod serves its own network
        "XRAYVISION_WEB_PORT": str(WEB_PORT),
        "XRAYVISION_DICOM_HOST": "0.0.0.0",  # noqa: S104
        "XRAYVISION_DICOM_PORT": str(dicom.get("port", 11112)),
        "XRAYVISION_DICOM_AE_TITLE": dicom.get("aeTitle", "XRAYVISION"),
        "XRAYVISION_AI_PRIMARY_URL": resolved.primary_url,
        "XRAYVISION_AI_TIMEOUT": str(model.get("timeoutSeconds", 300)),
        "XRAYVISION_RELAY_CONCURRENCY": str(model.get("concurrency", 4)),
        "XRAYVISION_PROCESSING_SEVERITY_THRESHOLD": str(spec.get("severityThreshold", 5)),
        "XRAYVISION_IMAGES_BACKEND": (
            "filesystem" if (spec.get("storage") or {}).get("images", {}).get("type") == "pvc"
            else "database"),
    }
    if resolved.primary_model:
        env["XRAYVISION_AI_MODEL"] = resolved.primary_model
    if resolved.max_images:  # a study read never sends more than its vLLM accepts
        env["XRAYVISION_AI_MAX_IMAGES"] = str(min(resolved.max_images, 32))
    if resolved.secondary_url:
        env["XRAYVISION_AI_SECONDARY_URL"] = resolved.secondary_url
        if resolved.secondary_model:
            env["XRAYVISION_AI_SECONDARY_MODEL"] = resolved.secondary_model
    if resolved.shadow_url:
        env["XRAYVISION_AI_SHADOW_URL"] = resolved.shadow_url
        if resolved.shadow_model:
            env["XRAYVISION_AI_SHADOW_MODEL"] = resolved.shadow_model
        if model.get("shadowReadsPerMinute"):
            env["XRAYVISION_AI_SHADOW_RATE"] = str(model["shadowReadsPerMinute"])
    probes = spec.get("probes") or {}
    if "intervalSeconds" in probes:
        env["XRAYVISION_PROBES_INTERVAL"] = str(probes["intervalSeconds"])
    if probes.get("latencyBudgetSeconds"):
        env["XRAYVISION_PROBES_LATENCY_BUDGET"] = str(probes["latencyBudgetSeconds"])
    if probes.get("configMapName"):
        env["XRAYVISION_PROBES_DIR"] = PROBES_DIR
    if dicom.get("allowedCallingAETitles"):
        env["XRAYVISION_DICOM_ALLOWED_CALLING_AETS"] = ",".join(dicom["allowedCallingAETitles"])
    pacs = dicom.get("pacs")
    if pacs:
        env.update({"XRAYVISION_PACS_HOST": pacs["host"], "XRAYVISION_PACS_PORT": str(pacs["port"]),
                    "XRAYVISION_PACS_AE_TITLE": pacs["aeTitle"],
                    "XRAYVISION_PACS_RETRIEVE": pacs.get("retrieve", "move")})
    fhir = spec.get("fhir")
    if fhir:
        env["XRAYVISION_FHIR_URL"] = fhir["url"]
        env["XRAYVISION_FHIR_POLL_INTERVAL"] = str(fhir.get("intervalSeconds", 300))
        # absent: the application's defaults; an empty value means "any" there
        if "identifierSystem" in fhir:
            env["XRAYVISION_FHIR_IDENTIFIER_SYSTEM"] = fhir["identifierSystem"]
        for field, name in (("reportCategories", "REPORT_CATEGORIES"),
                            ("reportCodes", "REPORT_CODES")):
            if field in fhir:
                env[f"XRAYVISION_FHIR_{name}"] = ",".join(fhir[field])
    env.update(_results_env(spec.get("results") or {}))
    ntfy = (spec.get("notifications") or {}).get("ntfy")
    if ntfy:
        env["XRAYVISION_NOTIFY_NTFY_URL"] = ntfy["url"]
        env["XRAYVISION_NOTIFY_NTFY_TOPIC"] = ntfy.get("topic", "xrayvision")
    host = (spec.get("web") or {}).get("host")
    if host:
        scheme = "https" if (spec.get("web") or {}).get("tlsSecretName") else "http"
        env["XRAYVISION_NOTIFY_DASHBOARD_URL"] = f"{scheme}://{host}"
    if (spec.get("prompts") or {}).get("configMapName"):
        env["XRAYVISION_AI_PROMPTS_DIR"] = "/etc/xrayvision/prompts"
    return env


RESULTS_TLS_DIR = "/etc/xrayvision/results-tls"


def _results_env(results: Obj) -> dict[str, str]:
    """``spec.results`` as the application's ``[results]`` settings (docs/results.md)."""
    env: dict[str, str] = {}
    dicom = results.get("dicom")
    if dicom:
        env["XRAYVISION_RESULTS_DICOM_DESTINATION"] = (
            f"{dicom['aeTitle']}@{dicom['host']}:{dicom['port']}")
        if dicom.get("secondaryCapture"):
            env["XRAYVISION_RESULTS_SECONDARY_CAPTURE"] = "true"
        tls = dicom.get("tlsSecret")
        if tls:
            env["XRAYVISION_RESULTS_DICOM_TLS_CA"] = f"{RESULTS_TLS_DIR}/ca.crt"
            if tls.get("clientCertificate"):
                env["XRAYVISION_RESULTS_DICOM_TLS_CERT"] = f"{RESULTS_TLS_DIR}/tls.crt"
                env["XRAYVISION_RESULTS_DICOM_TLS_KEY"] = f"{RESULTS_TLS_DIR}/tls.key"
    fhir = results.get("fhir")
    if fhir:
        env["XRAYVISION_RESULTS_FHIR_URL"] = fhir["url"]
    if "uidRoot" in results:
        env["XRAYVISION_RESULTS_UID_ROOT"] = results["uidRoot"]
    if "maxAttempts" in results:
        env["XRAYVISION_RESULTS_MAX_ATTEMPTS"] = str(results["maxAttempts"])
    return env


def config_map(xrv: Obj, resolved: Resolved) -> Obj:
    name = xrv["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(xrv, f"{name}-config", "config"),
            "data": dict(sorted(runtime_env(xrv, resolved).items()))}


def _secret_env(xrv: Obj, resolved: Resolved) -> list[Obj]:
    spec = _spec(xrv)
    env = []
    if resolved.database_secret is not None:
        secret, key = resolved.database_secret
        env.append({"name": "XRAYVISION_DATABASE_URL",
                    "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    for section, source in (("FHIR", spec.get("fhir")),
                            ("RESULTS_FHIR", ((spec.get("results") or {}).get("fhir")))):
        creds = (source or {}).get("credentialsSecret")
        if creds:
            for field in ("username", "password"):
                env.append({"name": f"XRAYVISION_{section}_{field.upper()}",
                            "valueFrom": {"secretKeyRef": {"name": creds["name"],
                                                           "key": field}}})
    return env


# pynetdicom streams each received dataset into a file in the temporary folder, and ingest
# then moves it into the image store: a rename on the same mount, but a full copy and
# fsync from the /tmp emptyDir, another mount. So ingest's TMPDIR is on the images mount.
INGEST_TMPDIR = "/var/lib/xrayvision/images/.incoming"
PROBES_DIR = "/etc/xrayvision/probes"  # spec.probes.configMapName: the known-answer set

SECURITY_CONTEXT = {
    "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod_volumes(xrv: Obj, component: str) -> tuple[list[Obj], list[Obj]]:
    spec = _spec(xrv)
    name = xrv["metadata"]["name"]
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
    mounts: list[Obj] = [{"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a pod's own emptyDir
              {"name": "data", "mountPath": "/var/lib/xrayvision"}]
    images = (spec.get("storage") or {}).get("images") or {}
    if images.get("type") == "pvc":
        volumes.append({"name": "images",
                        "persistentVolumeClaim": {"claimName": f"{name}-images"}})
        mounts.append({"name": "images", "mountPath": "/var/lib/xrayvision/images"})
    users = (spec.get("web") or {}).get("usersSecret")
    if users and component == "web":
        volumes.append({"name": "users", "secret": {"secretName": users["name"]}})
    tls = (((spec.get("results") or {}).get("dicom")) or {}).get("tlsSecret")
    if tls and component == "relay":  # (the results sender runs in the relay)
        volumes.append({"name": "results-tls", "secret": {"secretName": tls["name"]}})
        mounts.append({"name": "results-tls", "mountPath": RESULTS_TLS_DIR, "readOnly": True})
    prompts = (spec.get("prompts") or {}).get("configMapName")
    if prompts:
        volumes.append({"name": "prompts", "configMap": {"name": prompts}})
        mounts.append({"name": "prompts", "mountPath": "/etc/xrayvision/prompts",
                       "readOnly": True})
    probes = (spec.get("probes") or {}).get("configMapName")
    if probes and component == "relay":  # (the prober runs in the relay)
        volumes.append({"name": "probes", "configMap": {"name": probes}})
        mounts.append({"name": "probes", "mountPath": PROBES_DIR, "readOnly": True})
    return volumes, mounts


def deployment(xrv: Obj, component: str, resolved: Resolved, confighash: str) -> Obj:
    spec = _spec(xrv)
    name = xrv["metadata"]["name"]
    comp = ((spec.get("components") or {}).get(component)) or {}
    volumes, mounts = _pod_volumes(xrv, component)
    env = _secret_env(xrv, resolved)
    if component == "ingest":
        env.append({"name": "TMPDIR", "value": INGEST_TMPDIR})
    ports = [{"name": "http", "containerPort": WEB_PORT}]
    if component == "ingest":
        ports.append({"name": "dicom",
                      "containerPort": (spec.get("dicom") or {}).get("port", 11112)})
    container: Obj = {
        "name": component,
        "image": spec["image"],
        "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
        "args": ["serve", "--roles", component],
        "envFrom": [{"configMapRef": {"name": f"{name}-config"}}],
        "env": env,
        "ports": ports,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                           "periodSeconds": 5, "failureThreshold": 3},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                         "periodSeconds": 2, "failureThreshold": 60},
        "resources": comp.get("resources") or {
            "requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": SECURITY_CONTEXT,
        "volumeMounts": mounts,
    }
    users = (spec.get("web") or {}).get("usersSecret")
    if users and component == "web":
        container["envFrom"].append({"secretRef": {"name": users["name"]},
                                     "prefix": "XRAYVISION_USERS_"})
    regions = (spec.get("regions") or {}).get("configMapName")
    if regions:  # keys are region names, values their keywords ([regions] of the runtime)
        container["envFrom"].append({"configMapRef": {"name": regions},
                                     "prefix": "XRAYVISION_REGIONS_"})
    pod_spec: Obj = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 45,
        "enableServiceLinks": False,
    }
    for key in ("nodeSelector", "tolerations", "affinity"):
        if comp.get(key):
            pod_spec[key] = comp[key]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(xrv, f"{name}-{component}", component),
        "spec": {
            "replicas": comp.get("replicas", 1),
            "selector": {"matchLabels": selector(name, component)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(name, component),
                             "annotations": {CONFIG_HASH: confighash}},
                "spec": pod_spec,
            },
        },
    }


def dicom_service(xrv: Obj) -> Obj:
    spec = _spec(xrv)
    dicom = spec.get("dicom") or {}
    name = xrv["metadata"]["name"]
    svc: Obj = {
        "type": dicom.get("serviceType", "LoadBalancer"),
        "selector": selector(name, "ingest"),
        "ports": [{"name": "dicom", "port": dicom.get("port", 11112), "targetPort": "dicom",
                   "protocol": "TCP"}],
    }
    if dicom.get("loadBalancerSourceRanges"):
        svc["loadBalancerSourceRanges"] = dicom["loadBalancerSourceRanges"]
    if dicom.get("externalTrafficPolicy") and svc["type"] != "ClusterIP":
        svc["externalTrafficPolicy"] = dicom["externalTrafficPolicy"]
    meta = metadata(xrv, f"{name}-dicom", "ingest")
    if dicom.get("annotations"):
        meta["annotations"] = dict(dicom["annotations"])
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": svc}


def http_service(xrv: Obj, component: str) -> Obj:
    name = xrv["metadata"]["name"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(xrv, f"{name}-{component}", component),
        "spec": {"type": "ClusterIP", "selector": selector(name, component),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http",
                            "protocol": "TCP"}]},
    }


def metrics_service(xrv: Obj) -> Obj:
    """Every pod of the installation on its http port, for Prometheus (/metrics)."""
    name = xrv["metadata"]["name"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(xrv, f"{name}-metrics", "metrics"),
        "spec": {"type": "ClusterIP", "clusterIP": "None",
                 "selector": {"app.kubernetes.io/instance": name,
                              "app.kubernetes.io/managed-by": MANAGER},
                 "ports": [{"name": "http", "port": WEB_PORT, "targetPort": "http",
                            "protocol": "TCP"}]},
    }


def autoscaled(xrv: Obj, resolved: Resolved) -> bool:
    return bool(((_spec(xrv).get("autoscaling") or {}).get("enabled")) and resolved.keda)


def scaled_object(xrv: Obj, resolved: Resolved) -> Obj | None:
    """KEDA ScaledObject for the relay: one replica per ``queuedPerReplica`` waiting
    exams, and more while the oldest waits longer than ``maxWaitSeconds``."""
    if not autoscaled(xrv, resolved):
        return None
    auto = _spec(xrv)["autoscaling"]
    name, ns = xrv["metadata"]["name"], xrv["metadata"]["namespace"]
    scope = f'namespace="{ns}",service="{name}-metrics"'
    address = auto.get("prometheusAddress", "http://prometheus-operated.monitoring.svc:9090")
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": metadata(xrv, f"{name}-relay", "relay"),
        "spec": {
            "scaleTargetRef": {"name": f"{name}-relay"},
            "minReplicaCount": auto.get("minReplicas", 1),
            "maxReplicaCount": auto.get("maxReplicas", 4),
            "triggers": [
                {"type": "prometheus", "metadata": {
                    "serverAddress": address,
                    "query": f'max(xrayvision_queue_depth{{status=~"queued|requeue",{scope}}})',
                    "threshold": str(auto.get("queuedPerReplica", 20))}},
                {"type": "prometheus", "metadata": {
                    "serverAddress": address,
                    "query": f"max(xrayvision_queue_oldest_seconds{{{scope}}})",
                    "threshold": str(auto.get("maxWaitSeconds", 300))}},
            ],
        },
    }


def network_policy(xrv: Obj) -> Obj | None:
    """When enabled: pods of the installation accept DICOM and HTTP only (from anywhere
    the Services expose them to) and nothing else."""
    if not ((_spec(xrv).get("networkPolicy") or {}).get("enabled")):
        return None
    name = xrv["metadata"]["name"]
    port = (_spec(xrv).get("dicom") or {}).get("port", 11112)
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(xrv, name, "network"),
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": name,
                                                 "app.kubernetes.io/managed-by": MANAGER}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"ports": [{"protocol": "TCP", "port": WEB_PORT},
                                        {"protocol": "TCP", "port": port}]}]},
    }


def ingress(xrv: Obj) -> Obj | None:
    web = _spec(xrv).get("web") or {}
    if not web.get("host"):
        return None
    name = xrv["metadata"]["name"]
    meta = metadata(xrv, name, "web",
                    annotations={**WEBSOCKET_ANNOTATIONS, **(web.get("annotations") or {})})
    spec: Obj = {"rules": [{"host": web["host"], "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": f"{name}-web", "port": {"name": "http"}}}}]}}]}
    if web.get("ingressClassName"):
        spec["ingressClassName"] = web["ingressClassName"]
    if web.get("tlsSecretName"):
        spec["tls"] = [{"hosts": [web["host"]], "secretName": web["tlsSecretName"]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": spec}


def images_pvc(xrv: Obj) -> Obj | None:
    images = (_spec(xrv).get("storage") or {}).get("images") or {}
    if images.get("type") != "pvc":
        return None
    spec: Obj = {"accessModes": [images.get("accessMode", "ReadWriteMany")],
                 "resources": {"requests": {"storage": images["size"]}}}
    if images.get("storageClassName"):
        spec["storageClassName"] = images["storageClassName"]
    name = xrv["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": metadata(xrv, f"{name}-images", "storage"), "spec": spec}


def migration_job(xrv: Obj, resolved: Resolved, confighash: str) -> Obj:
    """``xrayvision migrate``, named by a hash of its whole pod template (image,
    configuration hash, Secret references, volumes): a Job's template is immutable, so
    any change makes a new Job (the old one is pruned), which runs before the
    Deployments roll."""
    spec = _spec(xrv)
    name = xrv["metadata"]["name"]
    volumes, mounts = _pod_volumes(xrv, "migrate")
    template = {
        "metadata": {"labels": labels(name, "migrate")},
        "spec": {
            "restartPolicy": "OnFailure",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "migrate", "image": spec["image"],
                "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
                "args": ["migrate"],
                "envFrom": [{"configMapRef": {"name": f"{name}-config"}}],
                "env": _secret_env(xrv, resolved),
                "securityContext": SECURITY_CONTEXT,
                "volumeMounts": mounts,
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                              "limits": {"memory": "512Mi"}},
            }],
            "volumes": volumes,
        },
    }
    tag = hashlib.sha256(json.dumps([confighash, template], sort_keys=True).encode()
                         ).hexdigest()[:8]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": metadata(xrv, f"{name}-migrate-{tag}", "migrate"),
        # No TTL: the finished Job stays as the record that this version is migrated (a
        # deleted one would be applied again and run again); the next version's Job
        # replaces it (pruned).
        "spec": {"backoffLimit": 6, "template": template},
    }


def pdb(xrv: Obj, component: str) -> Obj | None:
    comp = ((_spec(xrv).get("components") or {}).get(component)) or {}
    if comp.get("replicas", 1) < 2:
        return None
    name = xrv["metadata"]["name"]
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(xrv, f"{name}-{component}", component),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name, component)}}}


def service_monitor(xrv: Obj, resolved: Resolved) -> Obj | None:
    sm = ((_spec(xrv).get("metrics") or {}).get("serviceMonitor")) or {}
    if not sm.get("enabled") or not resolved.service_monitors:
        return None
    name = xrv["metadata"]["name"]
    meta = metadata(xrv, name, "metrics")
    meta["labels"] = {**meta["labels"], **(sm.get("labels") or {})}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": meta,
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": name,
                                                  "app.kubernetes.io/component": "metrics"}},
                     "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}]}}


def build_xrayvision(xrv: Obj, resolved: Resolved) -> list[Obj]:
    """Every object of an XRayVision; raises SpecError when it cannot be built."""
    spec = _spec(xrv)
    if not spec.get("image"):
        raise SpecError("spec.image is required")
    if resolved.database_secret is None:
        raise SpecError("no database: set spec.database.secretRef to a Secret holding the "
                        "PostgreSQL URL, or install CloudNativePG")
    if not resolved.primary_url:
        raise SpecError("spec.model.primary resolves to no URL")
    config = config_map(xrv, resolved)
    confighash = config_hash(config)
    objects: list[Obj] = [config, migration_job(xrv, resolved, confighash),
                          dicom_service(xrv), http_service(xrv, "web"), metrics_service(xrv)]
    for optional in (images_pvc(xrv), ingress(xrv), service_monitor(xrv, resolved),
                     network_policy(xrv), scaled_object(xrv, resolved)):
        if optional is not None:
            objects.append(optional)
    components = list(COMPONENTS) if spec.get("fhir") else [c for c in COMPONENTS
                                                            if c != "fhir"]
    for component in components:
        built = deployment(xrv, component, resolved, confighash)
        if component == "relay" and autoscaled(xrv, resolved):
            del built["spec"]["replicas"]  # KEDA's HPA sets it; applying one would fight it
        objects.append(built)
        budget = pdb(xrv, component)
        if budget is not None:
            objects.append(budget)
    return objects


# --- ModelEndpoint -----------------------------------------------------------------------


def vllm_url(mep: Obj) -> str:
    meta = mep["metadata"]
    return f"http://{meta['name']}-vllm.{meta['namespace']}.svc:8000"


def served_model(mep: Obj) -> str:
    spec = mep.get("spec") or {}
    if spec.get("vllm"):
        vllm = spec["vllm"]
        return str(vllm.get("servedModelName") or vllm.get("model", "google/medgemma-4b-it"))
    return str(spec.get("model", ""))


def images_per_prompt(mep: Obj) -> int:
    """How many images the managed vLLM accepts in one request (pure): its
    ``--limit-mm-per-prompt`` given in ``vllm.extraArgs`` (JSON ``{"image": N}`` or the
    older ``image=N``), else ``vllm.maxImagesPerPrompt`` (default 4); 0 when the extra
    argument cannot be read."""
    vllm = (mep.get("spec") or {}).get("vllm") or {}
    extra = [str(a) for a in vllm.get("extraArgs", [])]
    for i, arg in enumerate(extra):
        if arg == "--limit-mm-per-prompt" or arg.startswith("--limit-mm-per-prompt="):
            value = arg.partition("=")[2] if "=" in arg else (
                extra[i + 1] if i + 1 < len(extra) else "")
            try:
                parsed = json.loads(value)
                return int(parsed.get("image", 0)) if isinstance(parsed, dict) else 0
            except ValueError:
                pairs = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
                return int(pairs["image"]) if pairs.get("image", "").isdigit() else 0
    return int(vllm.get("maxImagesPerPrompt", 4))


def build_model_endpoint(mep: Obj) -> list[Obj]:
    """The vLLM Deployment, Service and cache PVC of a managed endpoint; [] for a url."""
    spec = mep.get("spec") or {}
    vllm = spec.get("vllm")
    if not vllm:
        return []
    name = f"{mep['metadata']['name']}-vllm"
    model = vllm.get("model", "google/medgemma-4b-it")
    gpus = vllm.get("gpus", 1)
    args = ["--model", model, "--served-model-name", served_model(mep),
            "--max-model-len", str(vllm.get("maxModelLen", 8192)),
            "--gpu-memory-utilization", str(vllm.get("gpuMemoryUtilization", 0.9)),
            "--tensor-parallel-size", str(gpus),
            "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104 - the pod's own address
    if not any(a == "--dtype" or a.startswith("--dtype=") for a in vllm.get("extraArgs", [])):
        # Gemma 3 is unstable in float16 (vLLM's "auto" picks it from some checkpoints)
        args += ["--dtype", vllm.get("dtype", "bfloat16")]
    args += vllm.get("extraArgs", [])
    if not any(a.startswith("--limit-mm-per-prompt") for a in vllm.get("extraArgs", [])):
        # vLLM's default is one image per prompt; a study read sends several.
        args += ["--limit-mm-per-prompt",
                 json.dumps({"image": images_per_prompt(mep)})]
    resources = copy.deepcopy(vllm.get("resources") or {})
    resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
    resources.setdefault("requests", {})["nvidia.com/gpu"] = gpus
    env: list[Obj] = [{"name": "HF_HOME", "value": "/root/.cache/huggingface"}]
    if vllm.get("hfTokenSecret"):
        ref = vllm["hfTokenSecret"]
        env.append({"name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref["key"]}}})
    cache = vllm.get("cache") or {}
    pvc_spec: Obj = {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": cache.get("size", "50Gi")}}}
    if cache.get("storageClassName"):
        pvc_spec["storageClassName"] = cache["storageClassName"]
    pod: Obj = {
        "containers": [{
            "name": "vllm", "image": vllm.get("image", "vllm/vllm-openai:v0.11.0"),
            "args": args, "env": env,
            "ports": [{"name": "http", "containerPort": 8000}],
            "resources": resources,
            "startupProbe": {"httpGet": {"path": "/health", "port": "http"},
                             "periodSeconds": 10, "failureThreshold": 180},
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"},
                               "periodSeconds": 10},
            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"},
                              "periodSeconds": 20, "failureThreshold": 6},
            "volumeMounts": [{"name": "cache", "mountPath": "/root/.cache/huggingface"},
                             {"name": "shm", "mountPath": "/dev/shm"}],  # noqa: S108
        }],
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": f"{name}-cache"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
    }
    for key in ("nodeSelector", "tolerations", "runtimeClassName"):
        if vllm.get(key):
            pod[key] = vllm[key]
    instance = mep["metadata"]["name"]
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": metadata(mep, f"{name}-cache", "model-cache"), "spec": pvc_spec},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": metadata(mep, name, "model"),
         "spec": {"replicas": vllm.get("replicas", 1),
                  "selector": {"matchLabels": selector(instance, "model")},
                  "strategy": {"type": "Recreate"},
                  "template": {"metadata": {"labels": labels(instance, "model")},
                               "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": metadata(mep, name, "model"),
         "spec": {"type": "ClusterIP", "selector": selector(instance, "model"),
                  "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}},
    ]


# --- comparison with the live object ---------------------------------------------------


def covers(live: Any, desired: Any) -> bool:
    """Whether ``live`` already has every field ``desired`` sets, with the same value
    (lists element by element); fields only the server or others set are ignored."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            key in live and covers(live[key], value) for key, value in desired.items())
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(covers(a, b) for a, b in zip(live, desired, strict=True)))
    return bool(live == desired)
