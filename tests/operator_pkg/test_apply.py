"""KubeApplier (the operator's only Kubernetes client) against the API-server stand-in of
tests/support/kubeapi.py: server-side apply with the field manager and force, GET with
None on 404, owned objects by labels and owner uid, prune, annotations, the status
subresource, events. (Against a real cluster: tests/e2e.)"""

import asyncio

import pytest
from kubernetes import client

from operator_pkg.crds import with_server_fields
from support.httppeer import serving
from support.kubeapi import CALLS, STORE, make_app
from xrayvision_operator.apply import KubeApplier
from xrayvision_operator.build import MANAGER, Resolved, build_xrayvision

XRV = with_server_fields({
    "apiVersion": "xrayvision.io/v1alpha1", "kind": "XRayVision", "metadata": {"name": "t"},
    "spec": {"image": "x:1", "database": {"secretRef": {"name": "db"}},
             "model": {"primary": {"url": "http://m"}}}})
RESOLVED = Resolved(primary_url="http://m", database_secret=("db", "url"))


@pytest.fixture
async def stub_api():
    app = make_app()
    async with serving(app) as url:
        config = client.Configuration(host=url)
        config.api_key = {"authorization": "Bearer stub"}
        applier = await asyncio.to_thread(KubeApplier, client.ApiClient(config))
        yield applier, app


async def test_apply_get_owned_delete(stub_api):
    applier, app = stub_api
    objects = build_xrayvision(XRV, RESOLVED)
    for obj in objects:
        await asyncio.to_thread(applier.apply, obj)
    applies = [c for c in app[CALLS] if c[0] == "PATCH"]
    assert len(applies) == len(objects)
    for call in applies:
        assert call[6].startswith("application/apply-patch")
        assert call[7]["fieldManager"] == MANAGER and call[7]["force"] == "true"
    config = await asyncio.to_thread(applier.get, "v1", "ConfigMap", "radiology", "t-config")
    assert config["data"]["XRAYVISION_AI_PRIMARY_URL"] == "http://m"
    assert await asyncio.to_thread(applier.get, "v1", "ConfigMap", "radiology", "no") is None
    owned = await asyncio.to_thread(applier.owned, XRV, "apps/v1", "Deployment")
    assert sorted(d["metadata"]["name"] for d in owned) == ["t-ingest", "t-relay", "t-web"]
    other = {**XRV, "metadata": {**XRV["metadata"], "uid": "someone-else"}}
    assert await asyncio.to_thread(applier.owned, other, "apps/v1", "Deployment") == []
    await asyncio.to_thread(applier.delete, owned[0])
    await asyncio.to_thread(applier.delete, owned[0])  # a 404 is not an error
    assert len(await asyncio.to_thread(applier.owned, XRV, "apps/v1", "Deployment")) == 2


async def test_optional_kinds_crds_annotations_status_events(stub_api):
    applier, app = stub_api
    assert await asyncio.to_thread(applier.crd_exists, "scaledobjects.keda.sh") is False
    app[STORE][("apiextensions.k8s.io/v1", "", "customresourcedefinitions",
                "scaledobjects.keda.sh")] = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "scaledobjects.keda.sh"}}
    assert await asyncio.to_thread(applier.crd_exists, "scaledobjects.keda.sh") is True
    assert await asyncio.to_thread(applier.owned, XRV, "keda.sh/v1alpha1", "ScaledObject") == []
    app[STORE][("xrayvision.io/v1alpha1", "radiology", "xrayvisions", "t")] = dict(XRV)
    listed = await asyncio.to_thread(applier.list, "xrayvision.io/v1alpha1", "XRayVision",
                                     "radiology")
    assert [x["metadata"]["name"] for x in listed] == ["t"]
    await asyncio.to_thread(applier.annotate, XRV, {"xrayvision.io/model-revision": "abc"})
    await asyncio.to_thread(applier.patch_status, XRV, {"componentsReady": "1/3"})
    stored = app[STORE][("xrayvision.io/v1alpha1", "radiology", "xrayvisions", "t")]
    assert stored["metadata"]["annotations"]["xrayvision.io/model-revision"] == "abc"
    assert stored["status"]["componentsReady"] == "1/3"
    status_call = next(c for c in app[CALLS] if c[5] == "status")
    assert status_call[6] == "application/merge-patch+json"
    await asyncio.to_thread(applier.event, XRV, "InvalidSpec", "no database", True)
    event = next(c for c in app[CALLS] if c[0] == "POST")[8]
    assert (event["reason"], event["type"], event["involvedObject"]["uid"]) == (
        "InvalidSpec", "Warning", "uid-t")


async def test_reconcile_through_the_real_applier(stub_api):
    from xrayvision_operator.reconcile import reconcile_xrayvision

    applier, app = stub_api
    status = await asyncio.to_thread(reconcile_xrayvision, XRV, applier)
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Progressing"] == "Migrating"
    store = app[STORE]
    relay = store[("apps/v1", "radiology", "deployments", "t-relay")]
    assert relay["spec"]["replicas"] == 0  # created, not started before the migration
    job = next(k for k in store if k[2] == "jobs")
    store[job]["status"] = {"succeeded": 1}
    status = await asyncio.to_thread(reconcile_xrayvision, XRV, applier)
    assert store[("apps/v1", "radiology", "deployments", "t-relay")]["spec"]["replicas"] == 1
    for name in ("t-relay", "t-web", "t-ingest"):
        store[("apps/v1", "radiology", "deployments", name)]["status"] = {"readyReplicas": 1}
    patches = len([c for c in app[CALLS] if c[0] == "PATCH"])
    status = await asyncio.to_thread(reconcile_xrayvision, XRV, applier)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["componentsReady"] == "3/3"
    # Nothing changed: only the migration Job is applied again.
    assert len([c for c in app[CALLS] if c[0] == "PATCH"]) == patches + 1
