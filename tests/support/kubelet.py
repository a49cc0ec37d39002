"""Stand-ins for the kubelet on the envtest control plane (no container runtime here).

:class:`StatusKubelet` runs no container: it writes what a kubelet would report for the
pods of one namespace, so that the controllers (ReplicaSet, Deployment, Job) and the
operator see pods start, become ready and finish. Job pods succeed (or fail, or stay
pending, as the test says); other pods run and are ready.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading

from kubernetes import client
from kubernetes.client.exceptions import ApiException


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_kind(pod: client.V1Pod) -> str:
    refs = pod.metadata.owner_references or []
    return refs[0].kind if refs else ""


class StatusKubelet:
    """Marks the pods of ``namespace``: ``jobs`` is "succeed", "fail" or "hold" (leave
    Job pods pending); ``hold_pods`` keeps the others pending too."""

    def __init__(self, api: client.ApiClient, namespace: str, *, jobs: str = "succeed",
                 interval: float = 0.3) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.jobs = jobs
        self.hold_pods = False
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{namespace}",
                                        daemon=True)

    def __enter__(self) -> StatusKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except ApiException:
                continue
            for pod in pods:
                if pod.metadata.deletion_timestamp or (pod.status.phase or "Pending") != "Pending":
                    continue
                with contextlib.suppress(ApiException):  # gone or changed: next round
                    self._mark(pod)

    def _mark(self, pod: client.V1Pod) -> None:
        now = _now()
        container = pod.spec.containers[0]
        if _owner_kind(pod) == "Job":
            if self.jobs == "hold":
                return
            code = 0 if self.jobs == "succeed" else 1
            status = {
                "phase": "Succeeded" if code == 0 else "Failed",
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "False",
                                "reason": "PodCompleted", "lastTransitionTime": now}],
                "containerStatuses": [{
                    "name": container.name, "image": container.image, "imageID": "",
                    "ready": False, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code,
                                             "reason": "Completed" if code == 0 else "Error",
                                             "startedAt": now, "finishedAt": now}}}]}
        else:
            if self.hold_pods:
                return
            status = {
                "phase": "Running", "startTime": now, "podIP": "10.244.0.10",
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                               for t in ("PodScheduled", "Initialized", "ContainersReady",
                                         "Ready")],
                "containerStatuses": [{
                    "name": c.name, "image": c.image, "imageID": "", "ready": True,
                    "started": True, "restartCount": 0,
                    "state": {"running": {"startedAt": now}}} for c in pod.spec.containers]}
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace,
                                              {"status": status})
