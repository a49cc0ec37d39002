"""The whole installation as our users make it, on a real control plane with every pod
run as a real process (tests/support/kubelet.py ``ProcessKubelet``, each pod in its own
network namespace on a test bridge):

``helm install`` the chart (the operator's Deployment runs as a pod with its
ServiceAccount token mounted) -> ``kubectl apply`` a ModelEndpoint (the stub model server)
and an XRayVision -> the migration Job runs ``xrayvision migrate`` against a real
PostgreSQL -> ingest, relay and web pods become Ready -> DCMTK ``storescu`` sends an
X-ray to the DICOM Service's address -> the exam is ``done`` with the stub's severity ->
the web pod's API, reached through the web Service (the Ingress's backend), shows it ->
the relay pod sends the read back: a DICOM SR C-STOREd into the study in Orthanc (the
PACS) and an Observation + preliminary DiagnosticReport into the HIS (sekmet-fhir), which
the fhir pod does not take for the radiologist's report.

Needs envtest assets (KUBEBUILDER_ASSETS), root (network namespaces) and DCMTK; skipped
with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from support.fhirpeer import PASSWORD as FHIR_PASSWORD
from support.fhirpeer import USER as FHIR_USER
from support.fhirpeer import Sekmet, diagnostic_report, patient
from support.kubecluster import Cluster, ControlPlane, assets_reason
from support.kubelet import PodNetwork, ProcessKubelet
from support.kubetools import helm
from support.model_stub import Stub
from support.pacs import Orthanc
from support.pgserver import PgServer, free_port
from support.xrays import make_xray, write

BIN = Path(sys.executable).parent
IMAGE = "ghcr.io/xrayvision/xrayvision:e2e"
PASSWORD = "e2e-password-123"


def reason() -> str:
    return assets_reason() or PodNetwork.reason() or (
        "" if shutil.which("storescu") else "DCMTK's storescu is not installed")


pytestmark = pytest.mark.skipif(bool(reason()), reason=reason() or "runs")


class StubThread:
    """The stub model server on the bridge address, in a thread with its own loop."""

    def __init__(self, host: str) -> None:
        self.stub = Stub(host=host, port=free_port())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Stub:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.stub.start(), self.loop).result(10)
        return self.stub

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.stub.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def endpoints(cluster: Cluster, namespace: str, service: str) -> list[tuple[str, int]]:
    """(address, port) of the ready endpoints of a Service, as kube-proxy would use them:
    the EndpointSlices the controller manager keeps from the pods' reported addresses."""
    out = cluster.kubectl("get", "endpointslices", "-n", namespace, "-l",
                          f"kubernetes.io/service-name={service}", "-o", "json").stdout
    found = []
    for piece in json.loads(out)["items"]:
        ports = [p["port"] for p in piece.get("ports") or []]
        for endpoint in piece.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                found += [(endpoint["addresses"][0], port) for port in ports]
    return found


def wait_for(what: str, check, timeout: float, logs=lambda: "") -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs()}")


@pytest.mark.timeout(900)
def test_helm_install_to_a_read_exam(tmp_path):
    (ROOT / "build").mkdir(exist_ok=True)
    hashed = subprocess.run([str(BIN / "xrayvision"), "hash-password", "--stdin"],
                            input=PASSWORD, capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    # Outside /tmp: pods mount their own /tmp over it, which would hide their volumes.
    base = Path(tempfile.mkdtemp(prefix="e2e-", dir=ROOT / "build"))
    app = base / "app"  # the image's WORKDIR: prompts/ and static/
    app.mkdir()
    for name in ("prompts", "static"):
        (app / name).symlink_to(ROOT / name)
    with PodNetwork() as network:
        plane = ControlPlane(bind_address=network.gateway).start()
        pg = PgServer(also_listen=network.gateway, trust=network.cidr).start()
        fhir = pacs = None
        try:
            pg.create_database("xrayvision")
            cluster = Cluster(plane)
            kubelet = ProcessKubelet(
                cluster.api(), network, base / "pods", images={IMAGE: [
                    str(BIN / "xrayvision")]},
                apiserver=(network.gateway, plane.port),
                namespaces=["xrayvision-system", "radiology"], bin_dirs=[BIN], workdir=app,
                keep=[ROOT, Path(sys.prefix)])
            fhir = Sekmet(base / "fhir", host=network.gateway).start()
            fhir.put(patient("p1", "1800101123456", "Popescu", "Ion", "1980-01-01", "male"))
            fhir.put(diagnostic_report("r1", "p1", "Pneumonie lob inferior drept.",
                                       accession="ACC123"))
            pacs = Orthanc(base / "orthanc", {}).start()
            with StubThread(network.gateway) as stub, kubelet:
                run_install(cluster, kubelet, stub, pg, network, hashed, tmp_path, fhir, pacs)
        finally:
            if fhir is not None:
                fhir.stop()
            if pacs is not None:
                pacs.stop()
            pg.destroy()
            plane.stop()
            shutil.rmtree(base, ignore_errors=True)


def run_install(cluster, kubelet, stub, pg, network, hashed, tmp_path, fhir, pacs) -> None:
    # 1. The operator, as docs/install.md installs it (no Prometheus operator here).
    result = subprocess.run(
        [str(helm()), "install", "xrayvision-operator", str(ROOT / "charts/xrayvision-operator"),
         "--kubeconfig", str(cluster.kubeconfig), "--namespace", "xrayvision-system",
         "--create-namespace", "--set", "image.repository=ghcr.io/xrayvision/xrayvision",
         "--set", "image.tag=e2e", "--set", "metrics.serviceMonitor.enabled=true",
         "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboards.enabled=true",
         "--wait", "--timeout", "180s"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr + kubelet.logs("operator")
    assert "were not created" in result.stdout  # NOTES: no Prometheus operator CRDs

    # 2. The installation, as examples/ and the NOTES describe it.
    db_url = f"postgresql+psycopg://{pg.user}@{network.gateway}:{pg.port}/xrayvision"
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "radiology"}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "xrayvision-db", "namespace": "radiology"},
         "stringData": {"url": db_url}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "xrayvision-users", "namespace": "radiology"},
         "stringData": {"admin": f"admin:{hashed}"}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "his-fhir", "namespace": "radiology"},
         "stringData": {"username": FHIR_USER, "password": FHIR_PASSWORD}},
        {"apiVersion": "xrayvision.io/v1alpha1", "kind": "ModelEndpoint",
         "metadata": {"name": "stub", "namespace": "radiology"},
         "spec": {"url": stub.url, "model": "medgemma"}},
        {"apiVersion": "xrayvision.io/v1alpha1", "kind": "XRayVision",
         "metadata": {"name": "triage", "namespace": "radiology"},
         "spec": {"image": IMAGE, "database": {"secretRef": {"name": "xrayvision-db"}},
                  "dicom": {"serviceType": "ClusterIP"},
                  "web": {"host": "xrv.example", "usersSecret": {"name": "xrayvision-users"}},
                  "fhir": {"url": fhir.url, "credentialsSecret": {"name": "his-fhir"},
                           "intervalSeconds": 5},
                  "results": {
                      "dicom": {"host": network.gateway, "port": pacs.port,
                                "aeTitle": pacs.aet},
                      "fhir": {"url": fhir.url, "credentialsSecret": {"name": "his-fhir"}}},
                  "model": {"primary": {"modelEndpoint": "stub"}}}},
    ]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    wait = cluster.kubectl("wait", "-n", "radiology", "--for=condition=Ready",
                           "xrv/triage", "--timeout=300s", check=False, timeout=330)
    assert wait.returncode == 0, (wait.stderr + cluster.kubectl(
        "get", "-n", "radiology", "xrv,pods,jobs", "-o", "wide").stdout + kubelet.logs())
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", "radiology", "-o", "json").stdout)
    assert jobs["items"][0]["status"].get("succeeded") == 1
    assert "alembic_version" in pg.psql("xrayvision", "SELECT tablename FROM pg_tables")

    # 3. An X-ray from DCMTK to the DICOM Service's address.
    dicom = endpoints(cluster, "radiology", "triage-dicom")
    assert dicom, cluster.kubectl("get", "endpointslices", "-n", "radiology").stdout
    path = write(make_xray(), tmp_path / "chest.dcm")
    sent = subprocess.run(["storescu", "-aet", "PACS", "-aec", "XRAYVISION", dicom[0][0],
                           str(dicom[0][1]), str(path)], capture_output=True, text=True,
                          timeout=60)
    assert sent.returncode == 0, sent.stderr + kubelet.logs("ingest")

    # 4. The read, through the web Service the Ingress sends to.
    ingress = json.loads(cluster.kubectl("get", "ingress", "-n", "radiology", "triage",
                                         "-o", "json").stdout)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
    address, port = endpoints(cluster, "radiology", backend)[0]
    auth = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()

    def exams() -> list[dict]:
        request = urllib.request.Request(f"http://{address}:{port}/api/exams",
                                         headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - test pod
            body = json.loads(resp.read())
        return body["exams"]

    done = wait_for("the exam read by the model", lambda: [
        e for e in exams() if e.get("status") == "done"], 120,
        lambda: kubelet.logs("relay") + kubelet.logs("ingest"))
    exam = done[0]
    assert exam["ai"]["severity"] == stub.state.check["severity"], exam
    assert stub.state.requests  # the relay pod reached the model over the bridge

    # 5. The radiologist's report, fetched by the fhir pod from the HIS.
    read = wait_for("the radiologist's report from FHIR", lambda: [
        e for e in exams() if e.get("rad")], 120, lambda: kubelet.logs("fhir"))
    assert read[0]["rad"]["severity"] is not None or read[0]["rad"].get("summary"), read[0]
    assert "AI" not in (read[0]["rad"].get("text") or "")  # the HIS's, not our own read

    # 6. The AI read back in the hospital: the SR in the study in the PACS, the FHIR
    #    resources in the HIS (the relay pod's results sender).
    study = wait_for("the SR in the PACS", lambda: pacs.study_instances(
        exam["study_uid"]).get("SR"), 120, lambda: kubelet.logs("relay"))
    assert len(study) == 2  # the measurement SR and the text SR
    observations = wait_for("the Observation in the HIS", lambda: fhir.request(
        "GET", "Observation?identifier=urn:xrayvision:ai-read|" + exam["study_uid"]
    ).get("entry"), 120, lambda: kubelet.logs("relay"))
    assert observations[0]["resource"]["valueInteger"] == stub.state.check["severity"]
    pods = json.loads(cluster.kubectl("get", "pods", "-n", "radiology", "-o", "json").stdout)
    running = {p["metadata"]["labels"].get("app.kubernetes.io/component")
               for p in pods["items"] if p["status"].get("phase") == "Running"}
    assert running >= {"ingest", "relay", "fhir", "web"}
