"""Fixtures for the operator on a real control plane (tests/support/kubecluster.py).

``kube`` is one control plane for the whole run, with the CRDs and ``deploy/rbac.yaml``
applied as a user would (``kubectl apply``); ``ns`` a fresh namespace per test;
``operator`` runs ``xrayvision-operator --namespace <ns>`` as a local process with the
token of the ServiceAccount from ``deploy/rbac.yaml`` (an RBAC gap fails the test).
Without envtest assets these tests skip, saying why.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from support.kubecluster import Cluster, ControlPlane, assets_reason, free_port

OPERATOR = Path(sys.executable).with_name("xrayvision-operator")
SA, SA_NAMESPACE = "xrayvision-operator", "xrayvision-system"


@pytest.fixture(scope="session")
def kube(tmp_path_factory) -> Iterator[Cluster]:
    reason = assets_reason()
    if reason:
        pytest.skip(reason)
    plane = ControlPlane().start()
    try:
        cluster = Cluster(plane)
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        for crd in ("xrayvisions.xrayvision.io", "modelendpoints.xrayvision.io"):
            # kubectl 1.32's wait fails on a CRD whose status is not written yet
            # (nor can jsonpath filter conditions that are not there yet: exit 1, retried)
            wait_for(f"{crd} Established", lambda crd=crd: cluster.kubectl(
                "get", "crd", crd, "-o",
                'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                check=False).stdout == "True")
        cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "rbac.yaml"))
        cluster.sa_kubeconfig = cluster.token_kubeconfig(
            SA, SA_NAMESPACE, tmp_path_factory.mktemp("sa") / "operator.kubeconfig")
        yield cluster
    finally:
        plane.stop()


@pytest.fixture
def ns(kube: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


class OperatorProcess:
    """``xrayvision-operator`` as a local process; its output in ``log``."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, *extra: str) -> None:
        self.argv = [str(OPERATOR), "--namespace", namespace, "--metrics-port", "0",
                     "--probe-port", "0", *extra]
        self.env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"}
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def operator(kube: Cluster, ns: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(kube.sa_kubeconfig, ns, tmp_path / "operator.log",
                           "--resync-seconds", "5").start()
    yield proc
    proc.stop()
    if proc.proc is not None and proc.proc.returncode not in (0, -15):
        print(proc.output()[-4000:])


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0,
             every: float = 0.5) -> object:
    """Polls ``check`` until it returns something true; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


__all__ = ["OperatorProcess", "free_port", "wait_for"]
