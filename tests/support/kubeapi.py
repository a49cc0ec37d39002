"""A stand-in for the Kubernetes API server's discovery (the real one cannot run here),
enough for ``kubectl apply --dry-run=client``: it lists the API groups and resources the
project uses, and answers 404 for every object, so kubectl maps kinds and plans creates.
Nothing is stored."""

from __future__ import annotations

from aiohttp import web

RESOURCES = {
    "v1": [("configmaps", "ConfigMap", True), ("services", "Service", True),
           ("secrets", "Secret", True), ("persistentvolumeclaims", "PersistentVolumeClaim", True),
           ("namespaces", "Namespace", False), ("serviceaccounts", "ServiceAccount", True)],
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
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": plural, "singularName": "", "namespaced": namespaced,
                           "kind": kind, "verbs": ["create", "delete", "get", "list", "patch",
                                                   "update", "watch"]}
                          for plural, kind, namespaced in RESOURCES[group_version]]}


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


async def anything(request: web.Request) -> web.Response:
    path = request.path.strip("/").split("/")
    if path[0] == "api" and len(path) == 2:
        return web.json_response(_resource_list(path[1]))
    if path[0] == "apis" and len(path) == 3:
        gv = f"{path[1]}/{path[2]}"
        if gv in RESOURCES:
            return web.json_response(_resource_list(gv))
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "NotFound", "code": 404, "message": "not found"},
                             status=404)


def make_app() -> web.Application:
    app = web.Application()
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
