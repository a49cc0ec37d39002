"""The kopf handlers called directly, with a recording applier in place of the API
server: the reconcile logic alone, fast (create, update, propagation, invalid spec,
drift, pruning, migration before rollout). The same behaviours on the real API server,
with the operator running: test_cluster.py."""

import copy

import kopf
import pytest

from operator_pkg.crds import with_server_fields
from xrayvision_operator.build import CONFIG_HASH
from xrayvision_operator.handlers import register
from xrayvision_operator.reconcile import MODEL_REVISION


class Patch:
    def __init__(self):
        self.status = {}


class RecordingApplier:
    """An in-memory cluster: applied objects are stored (merged, like server-side apply of
    the whole object); every call is recorded."""

    def __init__(self, crds=()):
        self.objects: dict[tuple, dict] = {}
        self.calls: list[tuple] = []
        self.events: list[tuple] = []
        self.crds = set(crds)
        self.job_succeeds = True

    @staticmethod
    def key(api_version, kind, namespace, name):
        return api_version, kind, namespace or "", name

    def add(self, obj):
        meta = obj["metadata"]
        self.objects[self.key(obj["apiVersion"], obj["kind"], meta.get("namespace"),
                              meta["name"])] = copy.deepcopy(obj)

    def apply(self, obj):
        self.calls.append(("apply", obj["kind"], obj["metadata"]["name"]))
        stored = copy.deepcopy(obj)
        if obj["kind"] == "Job" and self.job_succeeds:
            stored["status"] = {"succeeded": 1}
        if obj["kind"] == "Deployment":
            replicas = obj["spec"].get("replicas", 1)
            stored["status"] = {"readyReplicas": replicas, "availableReplicas": replicas,
                                "updatedReplicas": replicas}
        self.add(stored)
        return stored

    def get(self, api_version, kind, namespace, name):
        return copy.deepcopy(self.objects.get(self.key(api_version, kind, namespace, name)))

    def owned(self, owner, api_version, kind):
        uid = owner["metadata"]["uid"]
        return [copy.deepcopy(o) for (av, k, _, _), o in self.objects.items()
                if av == api_version and k == kind
                and any(r["uid"] == uid for r in o["metadata"].get("ownerReferences", []))]

    def delete(self, obj):
        self.calls.append(("delete", obj["kind"], obj["metadata"]["name"]))
        self.objects.pop(self.key(obj["apiVersion"], obj["kind"],
                                  obj["metadata"].get("namespace"), obj["metadata"]["name"]),
                         None)

    def crd_exists(self, name):
        return name in self.crds

    def list(self, api_version, kind, namespace):
        return [copy.deepcopy(o) for (av, k, ns, _), o in self.objects.items()
                if av == api_version and k == kind and ns == namespace]

    def list_in(self, api_version, kind, namespaces):
        return [copy.deepcopy(o) for (av, k, ns, _), o in self.objects.items()
                if av == api_version and k == kind and (not namespaces or ns in namespaces)]

    def annotate(self, obj, annotations):
        self.calls.append(("annotate", obj["kind"], obj["metadata"]["name"]))
        stored = self.objects[self.key(obj["apiVersion"], obj["kind"],
                                       obj["metadata"]["namespace"], obj["metadata"]["name"])]
        stored["metadata"].setdefault("annotations", {}).update(annotations)

    def event(self, obj, reason, message, warning=False):
        self.events.append((reason, message, warning))

    def patch_status(self, obj, status):
        self.calls.append(("status", obj["kind"], obj["metadata"]["name"]))
        self.objects[self.key(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"],
                              obj["metadata"]["name"])]["status"] = status


def xrv(spec=None, name="triage"):
    body = {"apiVersion": "xrayvision.io/v1alpha1", "kind": "XRayVision",
            "metadata": {"name": name},
            "spec": {"image": "xrv:1", "database": {"secretRef": {"name": "db"}},
                     "model": {"primary": {"modelEndpoint": "medgemma"}}, **(spec or {})}}
    return with_server_fields(body)


def mep(spec=None, name="medgemma"):
    return with_server_fields({"apiVersion": "xrayvision.io/v1alpha1", "kind": "ModelEndpoint",
                               "metadata": {"name": name},
                               "spec": spec or {"url": "http://gpu:8000", "model": "mg"}})


@pytest.fixture
def cluster():
    applier = RecordingApplier()
    handlers = register(kopf.OperatorRegistry(), applier, lambda url: url.startswith("http"))
    applier.add(mep())
    applier.add({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "db", "namespace": "radiology"}, "data": {"url": "eA=="}})
    return applier, handlers


def run(handlers, name, body):
    patch = Patch()
    handlers[name](body=body, patch=patch)
    return patch.status


def deployment(applier, name):
    return applier.get("apps/v1", "Deployment", "radiology", name)


def test_create_applies_everything_and_reports_ready(cluster):
    applier, handlers = cluster
    status = run(handlers, "xrayvision", xrv())
    applied = [c for c in applier.calls if c[0] == "apply"]
    assert applied[0][1] == "Job"  # the migration first
    assert {c[1] for c in applied} == {"Job", "ConfigMap", "Service", "Deployment"}
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Degraded"]["status"] == "False"
    assert conditions["Ready"]["observedGeneration"] == 1
    assert status["componentsReady"] == "3/3"
    assert status["model"]["primary"] == "http://gpu:8000"
    assert status["dicomEndpoint"] == "triage-dicom.radiology.svc:11112"
    config = applier.get("v1", "ConfigMap", "radiology", "triage-config")
    assert config["data"]["XRAYVISION_AI_MODEL"] == "mg"


def test_update_with_a_config_change_rolls_the_pods(cluster):
    applier, handlers = cluster
    run(handlers, "xrayvision", xrv())
    before = deployment(applier, "triage-relay")["spec"]["template"]["metadata"]
    changed = xrv({"severityThreshold": 8})
    changed["metadata"]["generation"] = 2
    status = run(handlers, "xrayvision", changed)
    after = deployment(applier, "triage-relay")["spec"]["template"]["metadata"]
    assert before["annotations"][CONFIG_HASH] != after["annotations"][CONFIG_HASH]
    assert status["observedGeneration"] == 2
    assert applier.get("v1", "ConfigMap", "radiology", "triage-config")["data"][
        "XRAYVISION_PROCESSING_SEVERITY_THRESHOLD"] == "8"


def test_model_endpoint_change_propagates(cluster):
    applier, handlers = cluster
    applier.add(xrv())
    run(handlers, "xrayvision", xrv())
    moved = mep({"url": "http://gpu2:8000", "model": "mg2"})
    status = run(handlers, "model_endpoint", moved)
    assert status["url"] == "http://gpu2:8000" and status["type"] == "url"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert ("annotate", "XRayVision", "triage") in applier.calls
    applier.add(moved)
    annotated = applier.get("xrayvision.io/v1alpha1", "XRayVision", "radiology", "triage")
    assert annotated["metadata"]["annotations"][MODEL_REVISION]
    run(handlers, "xrayvision", annotated)  # what the annotation's update event runs
    config = applier.get("v1", "ConfigMap", "radiology", "triage-config")
    assert config["data"]["XRAYVISION_AI_PRIMARY_URL"] == "http://gpu2:8000"
    applier.calls.clear()
    run(handlers, "model_endpoint", moved)  # same revision: nobody is poked again
    assert not [c for c in applier.calls if c[0] == "annotate"]


def test_managed_vllm_endpoint(cluster):
    applier, handlers = cluster
    status = run(handlers, "model_endpoint", mep({"vllm": {"gpus": 1}}, name="local"))
    assert status["type"] == "vllm"
    assert status["url"] == "http://local-vllm.radiology.svc:8000"
    assert {("apply", "Deployment", "local-vllm"), ("apply", "Service", "local-vllm"),
            ("apply", "PersistentVolumeClaim", "local-vllm-cache")} <= set(applier.calls)


def test_invalid_spec_is_degraded_with_an_event_and_applies_nothing(cluster):
    applier, handlers = cluster
    status = run(handlers, "xrayvision", xrv({"model": {"primary": {"modelEndpoint": "nope"}}}))
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Degraded"]["status"] == "True"
    assert "ModelEndpoint 'nope' does not exist" in conditions["Degraded"]["message"]
    assert conditions["Ready"]["status"] == "False"
    assert not [c for c in applier.calls if c[0] == "apply"]
    assert applier.events and applier.events[0][0] == "InvalidSpec" and applier.events[0][2]


def test_a_failure_is_posted_once_when_a_stale_body_comes_again(cluster):
    # A child's event (or the resync) may bring the object as it was before the status
    # saying "Degraded" was written: the same failure is not posted again.
    applier, handlers = cluster
    body = xrv({"model": {"primary": {"modelEndpoint": "nope"}}})
    for _ in range(3):
        run(handlers, "xrayvision", copy.deepcopy(body))  # status never written back
    assert [e[0] for e in applier.events] == ["InvalidSpec"]


def test_no_database_says_what_to_provide_and_cnpg_is_used_when_present(cluster):
    applier, handlers = cluster
    body = xrv()
    del body["spec"]["database"]
    status = run(handlers, "xrayvision", body)
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and "CloudNativePG" in degraded["message"]
    applier.crds.add("clusters.postgresql.cnpg.io")
    status = run(handlers, "xrayvision", body)
    assert applier.get("postgresql.cnpg.io/v1", "Cluster", "radiology", "triage-db")
    env = deployment(applier, "triage-relay")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "triage-db-app", "key": "uri"}


def test_child_drift_is_repaired(cluster):
    applier, handlers = cluster
    run(handlers, "xrayvision", xrv())
    edited = deployment(applier, "triage-web")
    edited["spec"]["replicas"] = 7
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    applier.add(edited)
    applier.delete(applier.get("v1", "Service", "radiology", "triage-dicom"))
    run(handlers, "xrayvision", xrv())  # the timer's run
    repaired = deployment(applier, "triage-web")
    assert repaired["spec"]["replicas"] == 1
    assert repaired["spec"]["template"]["spec"]["containers"][0]["image"] == "xrv:1"
    assert applier.get("v1", "Service", "radiology", "triage-dicom") is not None


def test_objects_no_longer_wanted_are_pruned(cluster):
    applier, handlers = cluster
    run(handlers, "xrayvision", xrv({"web": {"host": "x.example"},
                                     "components": {"web": {"replicas": 2}}}))
    assert applier.get("networking.k8s.io/v1", "Ingress", "radiology", "triage")
    assert applier.get("policy/v1", "PodDisruptionBudget", "radiology", "triage-web")
    run(handlers, "xrayvision", xrv())
    assert applier.get("networking.k8s.io/v1", "Ingress", "radiology", "triage") is None
    assert applier.get("policy/v1", "PodDisruptionBudget", "radiology", "triage-web") is None
    assert ("delete", "Ingress", "triage") in applier.calls


def test_deployments_wait_for_the_migration(cluster):
    applier, handlers = cluster
    applier.job_succeeds = False
    status = run(handlers, "xrayvision", xrv())
    assert deployment(applier, "triage-relay")["spec"]["replicas"] == 0  # created, idle
    progressing = {c["type"]: c for c in status["conditions"]}["Progressing"]
    assert progressing["reason"] == "Migrating"
    assert {c["type"]: c for c in status["conditions"]}["Ready"]["status"] == "False"
    job = next(o for k, o in applier.objects.items() if k[1] == "Job")
    job["status"] = {"succeeded": 1}  # what the Job controller writes
    status = run(handlers, "xrayvision", xrv())
    assert deployment(applier, "triage-relay")["spec"]["replicas"] == 1
    assert {c["type"]: c for c in status["conditions"]}["Ready"]["status"] == "True"


def test_a_failed_migration_is_degraded_with_an_event(cluster):
    applier, handlers = cluster
    applier.job_succeeds = False
    run(handlers, "xrayvision", xrv())
    job = next(o for k, o in applier.objects.items() if k[1] == "Job")
    job["status"] = {"failed": 7, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}
    status = run(handlers, "xrayvision", {**xrv(), "status": {}})
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "MigrationFailed"
    assert "BackoffLimitExceeded" in degraded["message"]
    assert deployment(applier, "triage-relay")["spec"]["replicas"] == 0
    assert [e[0] for e in applier.events] == ["MigrationFailed"]
    run(handlers, "xrayvision", {**xrv(), "status": status})  # same failure: no new Event
    assert len(applier.events) == 1


def test_a_child_change_refreshes_the_owner_status(cluster):
    applier, handlers = cluster
    applier.add(xrv())
    run(handlers, "xrayvision", xrv())
    child = deployment(applier, "triage-web")
    handlers["child_changed"](body=child)
    assert ("status", "XRayVision", "triage") in applier.calls
    stored = applier.get("xrayvision.io/v1alpha1", "XRayVision", "radiology", "triage")
    assert stored["status"]["componentsReady"] == "3/3"


def test_a_second_run_with_nothing_changed_writes_nothing(cluster):
    applier, handlers = cluster
    run(handlers, "xrayvision", xrv())
    applier.calls.clear()
    run(handlers, "xrayvision", xrv())
    assert applier.calls == []
