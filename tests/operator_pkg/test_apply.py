"""KubeApplier (the operator's only Kubernetes client) against the real API server, as
the operator's ServiceAccount: server-side apply with the field manager, GET with None on
404 and for a kind not served, owned objects by labels and owner uid, prune, annotations,
the status subresource, Events; discovery shared by many threads."""

import json
import threading

import pytest
from kubernetes.client.exceptions import ApiException

from operator_pkg.crds import with_server_fields
from xrayvision_operator.apply import KubeApplier
from xrayvision_operator.build import MANAGER, Resolved, build_xrayvision

RESOLVED = Resolved(primary_url="http://m", database_secret=("db", "url"))


@pytest.fixture
def applier(kube):
    return KubeApplier(kube.api(kube.sa_kubeconfig), absent_ttl=1.0)


@pytest.fixture
def xrv(kube, ns):
    """A live XRayVision (no operator runs: the test is the operator)."""
    body = {"apiVersion": "xrayvision.io/v1alpha1", "kind": "XRayVision",
            "metadata": {"name": "t", "namespace": ns},
            "spec": {"image": "x:1", "database": {"secretRef": {"name": "db"}},
                     "model": {"primary": {"url": "http://m"}}}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(body))
    return json.loads(kube.kubectl("get", "-n", ns, "xrv/t", "-o", "json").stdout)


def test_apply_get_owned_delete(applier, xrv, ns, kube):
    objects = build_xrayvision(with_server_fields(xrv, ns), RESOLVED)
    for obj in objects:
        applied = applier.apply(obj)
        assert applied["metadata"]["name"] == obj["metadata"]["name"]
    config = applier.get("v1", "ConfigMap", ns, "t-config")
    assert config["data"]["XRAYVISION_AI_PRIMARY_URL"] == "http://m"
    managers = json.loads(kube.kubectl("get", "-n", ns, "cm/t-config", "-o", "json",
                                       "--show-managed-fields").stdout)["metadata"][
        "managedFields"]
    assert [(m["manager"], m["operation"]) for m in managers] == [(MANAGER, "Apply")]
    assert applier.get("v1", "ConfigMap", ns, "no") is None
    owned = applier.owned(xrv, "apps/v1", "Deployment")
    assert sorted(d["metadata"]["name"] for d in owned) == ["t-ingest", "t-relay", "t-web"]
    other = {**xrv, "metadata": {**xrv["metadata"], "uid": "someone-else"}}
    assert applier.owned(other, "apps/v1", "Deployment") == []
    applier.delete({**owned[0], "apiVersion": "apps/v1", "kind": "Deployment"})
    applier.delete({**owned[0], "apiVersion": "apps/v1", "kind": "Deployment"})  # 404: fine
    assert len(applier.owned(xrv, "apps/v1", "Deployment")) == 2


def test_optional_kinds_annotations_status_events(applier, xrv, ns, kube):
    assert applier.crd_exists("scaledobjects.keda.sh") is False
    assert applier.owned(xrv, "keda.sh/v1alpha1", "ScaledObject") == []
    assert applier.get("keda.sh/v1alpha1", "ScaledObject", ns, "t") is None
    assert applier.crd_exists("xrayvisions.xrayvision.io") is True
    assert [x["metadata"]["name"] for x in applier.list(
        "xrayvision.io/v1alpha1", "XRayVision", ns)] == ["t"]
    assert [x["metadata"]["name"] for x in applier.list_in(
        "xrayvision.io/v1alpha1", "XRayVision", [ns])] == ["t"]
    applier.annotate(xrv, {"xrayvision.io/model-revision": "abc"})
    applier.patch_status(xrv, {"componentsReady": "1/3"})
    live = json.loads(kube.kubectl("get", "-n", ns, "xrv/t", "-o", "json",
                                   "--show-managed-fields").stdout)
    assert live["metadata"]["annotations"]["xrayvision.io/model-revision"] == "abc"
    assert live["status"]["componentsReady"] == "1/3"
    assert {m.get("subresource") for m in live["metadata"]["managedFields"]
            if "f:status" in m["fieldsV1"]} == {"status"}
    applier.event(xrv, "InvalidSpec", "no database", True)
    event = json.loads(kube.kubectl("get", "-n", ns, "events", "-o", "json").stdout)[
        "items"][0]
    assert (event["reason"], event["type"], event["involvedObject"]["uid"]) == (
        "InvalidSpec", "Warning", xrv["metadata"]["uid"])


def test_a_refused_apply_raises_the_servers_answer(applier, xrv, ns):
    objects = build_xrayvision(with_server_fields(xrv, ns), RESOLVED)
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    bad = {**config, "data": {"not a key!": "x"}}
    with pytest.raises(ApiException) as caught:
        applier.apply(bad)
    assert caught.value.status == 422


def test_discovery_is_safe_from_many_threads(applier, xrv):
    """kopf runs handlers in several threads; lookups of kinds that are not served
    (optional CRDs) must not break the others' (the dynamic client's cache did:
    KeyError 'resources')."""
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(15):
                if i % 2:
                    applier.owned(xrv, "monitoring.coreos.com/v1", "ServiceMonitor")
                    applier.owned(xrv, "postgresql.cnpg.io/v1", "Cluster")
                else:
                    applier.get("apps/v1", "Deployment", xrv["metadata"]["namespace"], "x")
                    applier.owned(xrv, "v1", "ConfigMap")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


async def test_model_probe_takes_urls_as_users_write_them():
    """``GET <url>/v1/models`` against the stub model server; a URL ending in ``/v1``
    (the OpenAI way) is the same server; an unparsable URL the CRD's pattern lets
    through is "not ready", not a handler crash."""
    import asyncio

    from support.httppeer import serving
    from support.model_stub import make_app
    from xrayvision_operator.apply import probe_models

    async with serving(make_app()) as url:
        for written in (url, url + "/", url + "/v1", url + "/v1/"):
            assert await asyncio.to_thread(probe_models, written), written
        assert not await asyncio.to_thread(probe_models, url + "/nothing-here")
    assert not await asyncio.to_thread(probe_models, "http://[::1")
    assert not await asyncio.to_thread(probe_models, "http://127.0.0.1:1", 1.0)
