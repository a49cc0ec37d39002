"""The pure status and failure rules: availability of a Deployment, Ready only after
the migration, transition times kept while a condition holds, immutable fields found,
which API answers are failures of the spec and which are retried."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from xrayvision_operator.reconcile import api_failure, immutable_changes, migration_state
from xrayvision_operator.status import (
    Failure,
    deployment_ready,
    with_error,
    xrayvision_status,
)


def deployment(generation=2, observed=2, available=1, updated=1, replicas=1):
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "availableReplicas": available,
                       "updatedReplicas": updated, "readyReplicas": available}}


@pytest.mark.parametrize(("live", "desired", "expected"), [
    (None, 1, (0, 1)),
    (deployment(), 1, (1, 1)),
    (deployment(observed=1), 1, (0, 1)),  # the controller has not seen the new spec yet
    (deployment(available=2, updated=1, replicas=2), 2, (1, 2)),  # old pods still serve
    (deployment(available=1), 0, (0, 0)),
    (deployment(available=3, updated=3, replicas=3), None, (3, 3)),
])
def test_deployment_ready_counts_available_pods_of_the_current_revision(live, desired,
                                                                         expected):
    assert deployment_ready(live, desired) == expected


def conditions(status):
    return {c["type"]: c for c in status["conditions"]}


def test_ready_needs_the_migration_and_replicas_and_keeps_transition_times():
    migrating = xrayvision_status(1, {"web": (0, 0)}, "", "", {}, migrated=False,
                                  at="2026-01-01T00:00:00Z")
    assert conditions(migrating)["Ready"]["status"] == "False"
    assert conditions(migrating)["Progressing"]["reason"] == "Migrating"
    zero = xrayvision_status(1, {"web": (0, 0)}, "", "", {}, at="2026-01-01T00:00:01Z",
                             previous=migrating["conditions"])
    assert conditions(zero)["Ready"]["status"] == "False"  # 0/0 is not ready
    ready = xrayvision_status(1, {"web": (1, 1)}, "", "", {}, at="2026-01-01T00:00:02Z",
                              previous=zero["conditions"])
    assert conditions(ready)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:02Z"
    assert conditions(ready)["Degraded"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    again = xrayvision_status(2, {"web": (1, 1)}, "", "", {}, at="2026-01-01T00:00:09Z",
                              previous=ready["conditions"])
    assert conditions(again)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:02Z"
    assert conditions(again)["Ready"]["observedGeneration"] == 2
    failed = xrayvision_status(3, {}, "", "", {}, failure=Failure("ImmutableField", "x"),
                               previous=again["conditions"], at="2026-01-01T00:00:10Z")
    assert [(c["type"], c["status"], c["reason"]) for c in failed["conditions"]] == [
        ("Ready", "False", "ImmutableField"), ("Progressing", "False", "ImmutableField"),
        ("Degraded", "True", "ImmutableField")]
    errored = with_error(failed, 3, "boom", at="2026-01-01T00:00:11Z")
    assert conditions({"conditions": errored})["Degraded"]["reason"] == "ReconcileError"
    assert conditions({"conditions": errored})["Ready"]["reason"] == "ImmutableField"


def test_immutable_changes_name_the_field_both_values_and_the_way_out():
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "p"},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "b"}}
    live = {("v1", "PersistentVolumeClaim", "p"): {
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "a"}}}
    found = immutable_changes([pvc], live)
    assert len(found) == 2
    assert "spec.accessModes" in found[0] and "'ReadWriteOnce'" in found[0]
    assert "delete the PersistentVolumeClaim" in found[0]
    assert immutable_changes([pvc], {}) == []  # not made yet: nothing to change
    unset = {**pvc, "spec": {"accessModes": ["ReadWriteOnce"]}}  # class left to the cluster
    assert immutable_changes([unset], live) == []


@pytest.mark.parametrize(("status", "spec_failure"), [
    (422, True), (403, True), (400, True), (404, True),
    (409, False), (429, False), (500, False), (503, False)])
def test_which_api_answers_are_spec_failures(status, spec_failure):
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"message": "the server's words"})
    failure = api_failure(exc, {"kind": "Deployment", "metadata": {"name": "d"}})
    assert (failure is not None) == spec_failure
    if failure:
        assert failure.reason == "ApplyFailed"
        assert "Deployment d" in failure.message and "the server's words" in failure.message


def test_migration_state():
    assert migration_state(None) == (False, "")
    assert migration_state({"status": {"succeeded": 1}}) == (True, "")
    done, error = migration_state({"metadata": {"name": "j"}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "limit"}]}})
    assert not done and "j failed (BackoffLimitExceeded: limit)" in error
