"""The one place that talks to the Kubernetes API: :class:`KubeApplier` implements
:class:`xrayvision_operator.reconcile.Applier` with the official client's dynamic client.

Server-side apply with field manager ``xrayvision-operator`` and forced conflicts: the
operator owns the fields it sets, so a hand edit of them is undone at the next
reconcile (drift repair) while fields it does not set stay as others set them.

kopf runs handlers in several threads; the dynamic client's discovery cache is not
thread-safe (a kind that is not served makes it rebuild the cache under the other
threads: ``KeyError: 'resources'``). So resources are looked up once per kind, under a
lock, and a kind that is not served (an optional CRD: ServiceMonitor, ScaledObject,
CloudNativePG Cluster) is remembered as absent for :data:`ABSENT_TTL` seconds, so one
installed later is picked up without a restart.

Errors: :class:`kubernetes.client.exceptions.ApiException` from the API server as it
came (status, reason, body); callers turn 4xx into conditions.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import threading
import time
import urllib.request
from typing import Any, cast

from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException

from xrayvision_operator.build import MANAGER, Obj

log = logging.getLogger(__name__)

ABSENT_TTL = 30.0  # seconds a kind found not served is taken as absent


def load_config() -> None:
    """In-cluster configuration, else the local kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class KubeApplier:
    def __init__(self, api_client: client.ApiClient | None = None, *,
                 absent_ttl: float = ABSENT_TTL) -> None:
        self.api = api_client or client.ApiClient()
        self.absent_ttl = absent_ttl
        self._lock = threading.Lock()
        self._resources: dict[tuple[str, str], tuple[object | None, float]] = {}
        self._dynamic: dynamic.DynamicClient | None = None  # discovery on first use

    def _discovery(self) -> dynamic.DynamicClient:
        """The dynamic client, made on first use (its discovery needs the API server,
        which may not answer yet when the operator starts). Call with the lock held."""
        if self._dynamic is None:
            self._dynamic = dynamic.DynamicClient(self.api)
        return self._dynamic

    def _resource(self, api_version: str, kind: str) -> Any:  # a dynamic Resource
        """The dynamic resource of a kind; raises ResourceNotFoundError when the API
        server does not serve it (checked again after ``absent_ttl`` seconds)."""
        key = (api_version, kind)
        with self._lock:
            found, at = self._resources.get(key, (None, -self.absent_ttl))
            if found is None and time.monotonic() - at >= self.absent_ttl:
                try:
                    found = self._discovery().resources.get(api_version=api_version,
                                                            kind=kind)
                except dynamic.exceptions.ResourceNotFoundError:
                    found = None
                self._resources[key] = (found, time.monotonic())
        if found is None:
            raise dynamic.exceptions.ResourceNotFoundError(
                f"{kind} ({api_version}) is not served by this API server")
        return found

    def apply(self, obj: Obj) -> Obj:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        result = resource.server_side_apply(
            body=obj, name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"), field_manager=MANAGER,
            force_conflicts=True)
        return cast(Obj, result.to_dict())

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return cast(Obj, self._resource(api_version, kind).get(
                name=name, namespace=namespace).to_dict())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        except dynamic.exceptions.ResourceNotFoundError:
            return None  # the kind itself is not served (optional CRD absent)

    def owned(self, owner: Obj, api_version: str, kind: str) -> list[Obj]:
        try:
            resource = self._resource(api_version, kind)
        except dynamic.exceptions.ResourceNotFoundError:
            return []
        selector = (f"app.kubernetes.io/instance={owner['metadata']['name']},"
                    f"app.kubernetes.io/managed-by={MANAGER}")
        items = resource.get(namespace=owner["metadata"]["namespace"],
                             label_selector=selector).to_dict().get("items", [])
        uid = owner["metadata"]["uid"]
        return [i for i in items
                if any(r.get("uid") == uid for r in i["metadata"].get("ownerReferences", []))]

    def delete(self, obj: Obj) -> None:
        try:
            self._resource(obj["apiVersion"], obj["kind"]).delete(
                name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
                body={"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def crd_exists(self, name: str) -> bool:
        return self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "",
                        name) is not None

    def list(self, api_version: str, kind: str, namespace: str) -> list[Obj]:
        found = self._resource(api_version, kind).get(namespace=namespace).to_dict()
        return cast(builtins.list[Obj], found.get("items", []))

    def list_in(self, api_version: str, kind: str,
                namespaces: builtins.list[str]) -> builtins.list[Obj]:
        """Objects of a kind in those namespaces; in all of them when the list is empty."""
        if not namespaces:
            items = self._resource(api_version, kind).get().to_dict().get("items", [])
            return builtins.list(items)
        return [o for ns in namespaces for o in self.list(api_version, kind, ns)]

    def annotate(self, obj: Obj, annotations: dict[str, str]) -> None:
        self._resource(obj["apiVersion"], obj["kind"]).patch(
            name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"],
            body={"metadata": {"annotations": annotations}},
            content_type="application/merge-patch+json")

    def patch_status(self, obj: Obj, status: Obj) -> None:
        self._resource(obj["apiVersion"], obj["kind"]).status.patch(
            name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"],
            body={"status": status}, content_type="application/merge-patch+json")

    def event(self, obj: Obj, reason: str, message: str, warning: bool = False) -> None:
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC).isoformat()
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                   "name": meta["name"], "namespace": meta["namespace"],
                                   "uid": meta["uid"]},
                "reason": reason, "message": message[:1024],
                "type": "Warning" if warning else "Normal", "firstTimestamp": now,
                "lastTimestamp": now, "source": {"component": MANAGER}}
        try:
            self._resource("v1", "Event").create(body=body, namespace=meta["namespace"])
        except ApiException:
            log.warning("could not record an event", exc_info=True)


def probe_models(url: str, timeout: float = 5.0) -> bool:
    """True when ``GET <url>/v1/models`` answers 200; a base URL written the OpenAI way,
    ending in ``/v1``, is taken as the same server. False for any failure, a URL that
    cannot be parsed included."""
    base = url.rstrip("/")
    base = base.removesuffix("/v1")
    try:
        with urllib.request.urlopen(base + "/v1/models",  # noqa: S310 - http(s) by CRD pattern
                                    timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


VERDICTS_URL = "http://{name}-metrics.{namespace}.svc:8080/model-probes"


def fetch_verdicts(xrv: Obj, template: str = VERDICTS_URL,
                   timeout: float = 5.0) -> list[Obj] | None:
    """The known-answer probe verdicts an XRayVision's pods keep (``GET /model-probes``
    on any of its pods, through the headless metrics Service; ``template`` takes
    ``{name}`` and ``{namespace}``); None when none answers or the answer is not theirs."""
    meta = xrv["metadata"]
    url = template.format(name=meta["name"], namespace=meta["namespace"])
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - ours
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    verdicts = data.get("verdicts") if isinstance(data, dict) else None
    return [v for v in verdicts if isinstance(v, dict)] if isinstance(verdicts, list) else None
