"""A stand-in for the Kubernetes API server (the real one cannot run here): discovery of
the API groups and resources the project uses, enough for ``kubectl apply
--dry-run=client``; and, for the operator's KubeApplier, a small in-memory object store:
GET (404 when absent), LIST with a label selector, server-side-apply PATCH (the whole
object replaces the stored one; field manager and force recorded), merge PATCH of
metadata and of the status subresource, DELETE, and POST of Events. Requests are recorded
in ``app[CALLS]``."""

from __future__ import annotations

from aiohttp import web

RESOURCES = {
    "v1": [("configmaps", "ConfigMap", True), ("services", "Service", True),
           ("secrets", "Secret", True), ("persistentvolumeclaims", "PersistentVolumeClaim", True),
           ("namespaces", "Namespace", False), ("serviceaccounts", "ServiceAccount", True),
           ("events", "Event", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "batch/v1": [("jobs", "Job", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("ingresses", "Ingress", True),
                             ("networkpolicies", "NetworkPolicy", True)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition",
                                 False)],
    "rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("roles", "Role", True),
                                     ("rolebindings", "RoleBinding", True)],
    "xrayvision.io/v1alpha1": [("xrayvisions", "XRayVision", True),
                               ("modelendpoints", "ModelEndpoint", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
    "keda.sh/v1alpha1": [("scaledobjects", "ScaledObject", True)],
}


def _resource_list(group_version: str) -> dict:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    resources = []
    for plural, kind, namespaced in RESOURCES[group_version]:
        resources.append({"name": plural, "singularName": "", "namespaced": namespaced,
                          "kind": kind, "verbs": verbs})
        if group_version == "xrayvision.io/v1alpha1":  # custom resources: status subresource
            resources.append({"name": f"{plural}/status", "singularName": "",
                              "namespaced": namespaced, "kind": kind,
                              "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


async def api(request: web.Request) -> web.Response:
    return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                              "serverAddressByClientCIDRs": []})


async def apis(request: web.Request) -> web.Response:
    groups = []
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        group, version = gv.split("/")
        entry = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0"})


STORE = web.AppKey("store", dict)
CALLS = web.AppKey("calls", list)
NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
             "code": 404, "message": "not found"}


def _split(path: list[str]) -> tuple[str, str | None, str, str | None, str | None] | None:
    """(group/version, namespace, plural, name, subresource) of an object path."""
    if path[0] == "api":
        gv, rest = path[1], path[2:]
    elif path[0] == "apis" and len(path) >= 4:
        gv, rest = f"{path[1]}/{path[2]}", path[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    return gv, namespace, rest[0], rest[1] if len(rest) > 1 else None, \
        rest[2] if len(rest) > 2 else None


def _matches(obj: dict, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


async def anything(request: web.Request) -> web.Response:
    path = request.path.strip("/").split("/")
    if request.method == "GET" and path[0] == "api" and len(path) == 2:
        return web.json_response(_resource_list(path[1]))
    if request.method == "GET" and path[0] == "apis" and len(path) == 3:
        gv = f"{path[1]}/{path[2]}"
        if gv in RESOURCES:
            return web.json_response(_resource_list(gv))
    parts = _split(path)
    if parts is None:
        return web.json_response(NOT_FOUND, status=404)
    gv, namespace, plural, name, sub = parts
    store: dict = request.app[STORE]
    body = await request.json() if request.can_read_body else None
    request.app[CALLS].append((request.method, gv, namespace, plural, name, sub,
                               request.headers.get("Content-Type", ""),
                               dict(request.query), body))
    key = (gv, namespace or "", plural, name)
    if name is None:
        if request.method == "POST":  # events
            return web.json_response(body, status=201)
        items = [o for (g, ns, pl, _), o in store.items()
                 if g == gv and pl == plural and (namespace is None or ns == namespace)
                 and _matches(o, request.query.get("labelSelector", ""))]
        kind = next((k for p, k, _ in RESOURCES.get(gv, []) if p == plural), "")
        return web.json_response({"kind": f"{kind}List", "apiVersion": gv,
                                  "metadata": {"resourceVersion": "1"}, "items": items})
    if request.method == "GET":
        obj = store.get(key)
        return web.json_response(obj) if obj else web.json_response(NOT_FOUND, status=404)
    if request.method == "DELETE":
        obj = store.pop(key, None)
        return web.json_response(obj) if obj else web.json_response(NOT_FOUND, status=404)
    if request.method == "PATCH":
        content = request.headers.get("Content-Type", "")
        if content.startswith("application/apply-patch"):
            stored = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
            if key in store and "status" in store[key]:
                stored["status"] = store[key]["status"]
            store[key] = stored
            return web.json_response(stored)
        if key not in store:
            return web.json_response(NOT_FOUND, status=404)
        if sub == "status":
            store[key]["status"] = {**store[key].get("status", {}), **body["status"]}
        else:
            meta = store[key]["metadata"]
            for field, value in body.get("metadata", {}).items():
                meta[field] = {**(meta.get(field) or {}), **value}
        return web.json_response(store[key])
    return web.json_response(NOT_FOUND, status=404)


def make_app() -> web.Application:
    app = web.Application()
    app[STORE] = {}
    app[CALLS] = []
    app.router.add_get("/api", api)
    app.router.add_get("/apis", apis)
    app.router.add_get("/version", version)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def kubeconfig(server: str) -> str:
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n"
            f"    server: {server}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n"
            f"    user: stub\n    namespace: default\ncurrent-context: stub\nusers:\n"
            f"- name: stub\n  user:\n    token: stub\n")
