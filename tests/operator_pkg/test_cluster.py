"""The operator on a real Kubernetes control plane (etcd, kube-apiserver,
kube-controller-manager from KUBEBUILDER_ASSETS; see conftest.py): what a user does with
kubectl, and what the operator, running as its own ServiceAccount, makes of it. Pods are
marked by a status-only kubelet (tests/support/kubelet.py): no container runs here."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml

from conftest import ROOT
from operator_pkg.conftest import OperatorProcess, free_port, wait_for
from support.kubelet import StatusKubelet
from xrayvision_operator.build import MANAGER

GROUP = "xrayvision.io"


def apply(kube, ns: str, *docs: dict) -> None:
    kube.kubectl("apply", "-n", ns, "-f", "-",
                 stdin=yaml.safe_dump_all(docs))


def get(kube, ns: str, what: str) -> dict | None:
    result = kube.kubectl("get", "-n", ns, what, "-o", "json", "--show-managed-fields",
                          check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def items(kube, ns: str, kind: str) -> list[dict]:
    return json.loads(kube.kubectl("get", "-n", ns, kind, "-o", "json",
                                   "--show-managed-fields").stdout)["items"]


def cond(obj: dict | None, kind: str) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == kind), {})


def secret(name: str = "db") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"url": "postgresql+psycopg://x@pg:5432/x"}}


def endpoint(url: str = "http://127.0.0.1:9", name: str = "stub", **spec) -> dict:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": name}, "spec": {"url": url, "model": "m", **spec}}


def installation(name: str = "triage", **spec) -> dict:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "XRayVision",
            "metadata": {"name": name},
            "spec": {"image": "xrv:1", "database": {"secretRef": {"name": "db"}},
                     "dicom": {"serviceType": "ClusterIP"},
                     "model": {"primary": {"modelEndpoint": "stub"}}, **spec}}


def events(kube, ns: str, name: str) -> list[dict]:
    return [e for e in items(kube, ns, "events")
            if e["involvedObject"].get("name") == name]


# --- what kubectl users see ---------------------------------------------------------------


def test_crds_are_established_and_named_as_kubectl_users_type_them(kube, ns):
    for crd in ("xrayvisions.xrayvision.io", "modelendpoints.xrayvision.io"):
        crd_obj = json.loads(kube.kubectl("get", "crd", crd, "-o", "json").stdout)
        assert cond(crd_obj, "Established")["status"] == "True"
        assert cond(crd_obj, "NamesAccepted")["status"] == "True"
    apply(kube, ns, secret(), endpoint(), installation())
    for what in (["xrayvision", "triage"], ["xrv", "triage"], ["xrayvisions"],
                 ["modelendpoint", "stub"], ["mep"], ["xrayvision-all"]):
        out = kube.kubectl("get", "-n", ns, *what).stdout
        assert "triage" in out or "stub" in out, (what, out)
    header = kube.kubectl("get", "-n", ns, "xrv").stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "COMPONENTS", "DICOM", "MODEL", "AGE"]
    header = kube.kubectl("get", "-n", ns, "mep").stdout.splitlines()[0].split()
    assert header[:2] == ["NAME", "TYPE"]


def test_examples_and_rbac_apply_on_a_fresh_cluster(kube, ns):
    """Every example passes the API server's own validation (schema, CEL, defaults) in a
    server-side dry run; deploy/rbac.yaml creates its namespace itself."""
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        result = kube.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(path),
                              check=False)
        assert result.returncode == 0, (path.name, result.stderr)
    rbac = yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text())
    assert next(d for d in rbac if d)["kind"] == "Namespace"  # first, so apply succeeds


def test_invalid_and_immutable_specs_are_refused_by_the_api_server(kube, ns):
    bad = installation(web={"tlsSecretName": "x"})
    result = kube.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(bad), check=False)
    assert result.returncode != 0 and "tlsSecretName needs spec.web.host" in result.stderr
    pvc = installation(storage={"images": {"type": "pvc", "size": "1Gi",
                                           "accessMode": "ReadWriteMany"}})
    apply(kube, ns, pvc)
    pvc["spec"]["storage"]["images"]["accessMode"] = "ReadWriteOnce"
    result = kube.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(pvc), check=False)
    assert result.returncode != 0
    assert "accessMode cannot change while the image PVC exists" in result.stderr
    pvc["spec"]["storage"]["images"].update(accessMode="ReadWriteMany",
                                            storageClassName="fast")
    result = kube.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(pvc), check=False)
    assert "storageClassName cannot change" in result.stderr


# --- the operator -------------------------------------------------------------------------


def test_install_becomes_ready_only_after_migration_and_available_replicas(kube, ns,
                                                                           operator):
    api = kube.api()
    with StatusKubelet(api, ns, jobs="hold") as kubelet:
        apply(kube, ns, secret(), endpoint(), installation())
        job = wait_for("the migration Job", lambda: items(kube, ns, "jobs"))[0]
        xrv = wait_for("Migrating", lambda: (x := get(kube, ns, "xrv/triage"))
                       and cond(x, "Progressing").get("reason") == "Migrating" and x)
        assert cond(xrv, "Ready")["status"] == "False"
        for deploy in items(kube, ns, "deployments"):
            assert deploy["spec"]["replicas"] == 0  # created, not started before migration
        wait = kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                            "--timeout=3s", check=False)
        assert wait.returncode != 0  # kubectl wait does not return before it is true

        kubelet.jobs = "succeed"
        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                     "--timeout=60s")
    xrv = get(kube, ns, "xrv/triage")
    status = xrv["status"]
    assert status["componentsReady"] == "3/3"
    assert status["dicomEndpoint"] == f"triage-dicom.{ns}.svc:11112"
    for kind in ("Ready", "Progressing", "Degraded"):
        c = cond(xrv, kind)
        assert c["observedGeneration"] == xrv["metadata"]["generation"]
        assert c["lastTransitionTime"].endswith("Z")
    assert not xrv["metadata"].get("finalizers")
    # children: owner reference to the XRayVision, applied by the operator's field manager
    uid = xrv["metadata"]["uid"]
    children = [*items(kube, ns, "deployments"), *items(kube, ns, "services"),
                *items(kube, ns, "configmaps"), *items(kube, ns, "jobs")]
    ours = [c for c in children if c["metadata"].get("labels", {}).get(
        "app.kubernetes.io/managed-by") == MANAGER]
    assert {c["metadata"]["name"] for c in ours} >= {
        "triage-ingest", "triage-relay", "triage-web", "triage-dicom", "triage-config",
        job["metadata"]["name"]}
    for child in ours:
        refs = child["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"], r["controller"]) for r in refs] == [
            ("XRayVision", uid, True)]
        managers = {m["manager"] for m in child["metadata"]["managedFields"]
                    if m["operation"] == "Apply"}
        assert managers == {MANAGER}
    status_writers = {(m["manager"], m.get("subresource", "")) for m in
                      xrv["metadata"]["managedFields"] if "f:status" in m.get("fieldsV1", {})}
    assert status_writers and all(sub == "status" for _, sub in status_writers)


def test_drift_is_repaired_and_endpoint_changes_propagate(kube, ns, operator):
    api = kube.api()
    with StatusKubelet(api, ns):
        apply(kube, ns, secret(), endpoint(), installation())
        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                     "--timeout=60s")
        kube.kubectl("scale", "-n", ns, "deployment/triage-web", "--replicas=5")
        kube.kubectl("delete", "-n", ns, "service/triage-dicom")
        kube.kubectl("patch", "-n", ns, "configmap/triage-config", "--type=merge",
                     "-p", '{"data": {"XRAYVISION_AI_PRIMARY_URL": "http://evil"}}')
        wait_for("the repair", lambda: get(kube, ns, "deployment/triage-web")["spec"][
            "replicas"] == 1 and get(kube, ns, "service/triage-dicom") is not None
            and get(kube, ns, "configmap/triage-config")["data"][
                "XRAYVISION_AI_PRIMARY_URL"] == "http://127.0.0.1:9", timeout=30)
        apply(kube, ns, endpoint("http://127.0.0.2:8000"))
        wait_for("the new URL in the configuration", lambda: get(
            kube, ns, "configmap/triage-config")["data"]["XRAYVISION_AI_PRIMARY_URL"]
            == "http://127.0.0.2:8000", timeout=30)
        xrv = wait_for("the status with the new URL", lambda: (x := get(kube, ns, "xrv/triage"))
                       and x["status"]["model"]["primary"] == "http://127.0.0.2:8000" and x)
        assert xrv["status"]["model"]["primary"] == "http://127.0.0.2:8000"


def test_a_database_secret_change_runs_a_new_migration_job(kube, ns, operator):
    """A Job's template is immutable: the new Secret reference makes a new Job (no 422
    loop), the old one is pruned, and the Deployments roll after it succeeded."""
    with StatusKubelet(kube.api(), ns):
        apply(kube, ns, secret(), secret("db2"), endpoint(), installation())
        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                     "--timeout=60s")
        first = [j["metadata"]["name"] for j in items(kube, ns, "jobs")]
        apply(kube, ns, installation(database={"secretRef": {"name": "db2"}}))
        wait_for("a new Job replacing the old", lambda: (
            names := [j["metadata"]["name"] for j in items(kube, ns, "jobs")
                      if not j["metadata"].get("deletionTimestamp")])
            and names != first and len(names) == 1, timeout=30)
        xrv = wait_for("Ready for generation 2", lambda: (x := get(kube, ns, "xrv/triage"))
                       and cond(x, "Ready").get("status") == "True"
                       and cond(x, "Ready").get("observedGeneration") == 2 and x)
        env = get(kube, ns, "deployment/triage-relay")["spec"]["template"]["spec"][
            "containers"][0]["env"]
        assert env[0]["valueFrom"]["secretKeyRef"]["name"] == "db2"
        assert "ApplyFailed" not in {e["reason"] for e in events(kube, ns, "triage")}
        assert xrv


def test_invalid_specs_are_degraded_with_an_event_and_apply_nothing(kube, ns, operator):
    apply(kube, ns, endpoint(), installation())  # its database Secret does not exist
    xrv = wait_for("Degraded", lambda: (x := get(kube, ns, "xrv/triage"))
                   and cond(x, "Degraded").get("status") == "True" and x)
    degraded = cond(xrv, "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "Secret 'db' does not exist" in degraded["message"]
    assert cond(xrv, "Ready")["status"] == "False"
    assert items(kube, ns, "deployments") == [] and items(kube, ns, "jobs") == []
    warning = wait_for("the Warning event", lambda: [
        e for e in events(kube, ns, "triage") if e["reason"] == "InvalidSpec"])
    assert warning[0]["type"] == "Warning" and "Secret 'db'" in warning[0]["message"]
    apply(kube, ns, installation(model={"primary": {"modelEndpoint": "nope"}}))
    wait_for("the new reason", lambda: "ModelEndpoint 'nope' does not exist" in cond(
        get(kube, ns, "xrv/triage"), "Degraded").get("message", ""))
    apply(kube, ns, secret(), installation())  # fixed: the installation is made
    wait_for("the Deployments", lambda: len(items(kube, ns, "deployments")) == 3)
    wait_for("Degraded False", lambda: cond(get(kube, ns, "xrv/triage"), "Degraded").get(
        "status") == "False")


def test_an_immutable_field_change_is_degraded_not_retried_forever(kube, ns, operator):
    """The managed vLLM cache PVC's storage class cannot change: the operator says so in
    the ModelEndpoint's conditions and one Event, and applies nothing of that spec."""
    vllm = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": "gpu"},
            "spec": {"vllm": {"gpus": 1, "cache": {"size": "1Gi", "storageClassName": "a"}}}}
    apply(kube, ns, vllm)
    wait_for("the cache PVC", lambda: get(kube, ns, "pvc/gpu-vllm-cache"))
    vllm["spec"]["vllm"].update(cache={"size": "1Gi", "storageClassName": "b"},
                                replicas=2)
    apply(kube, ns, vllm)
    mep = wait_for("Degraded", lambda: (m := get(kube, ns, "mep/gpu"))
                   and cond(m, "Degraded").get("status") == "True" and m)
    message = cond(mep, "Degraded")["message"]
    assert cond(mep, "Degraded")["reason"] == "ImmutableField"
    assert "storageClassName" in message and "'a'" in message and "'b'" in message
    assert get(kube, ns, "deployment/gpu-vllm")["spec"]["replicas"] == 1  # nothing applied
    time.sleep(6)  # a resync later: still one Event, no apply error loop
    reasons = [e["reason"] for e in events(kube, ns, "gpu")]
    assert reasons.count("ImmutableField") == 1 and "ApplyFailed" not in reasons


def test_the_managed_vllms_image_limit_reaches_the_app(kube, ns, operator):
    """A study read must not send more images than its vLLM accepts: the managed vLLM is
    started with --limit-mm-per-prompt from the ModelEndpoint, and the app's ConfigMap
    gets the same number (the app's default otherwise)."""
    vllm = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": "gpu"},
            "spec": {"vllm": {"gpus": 1, "maxImagesPerPrompt": 3}}}
    apply(kube, ns, secret(), vllm,
          installation(model={"primary": {"modelEndpoint": "gpu"}}))
    config = wait_for("the app's ConfigMap", lambda: get(kube, ns, "configmap/triage-config"))
    assert config["data"]["XRAYVISION_AI_MAX_IMAGES"] == "3"
    args = get(kube, ns, "deployment/gpu-vllm")["spec"]["template"]["spec"]["containers"][0][
        "args"]
    assert args[args.index("--limit-mm-per-prompt") + 1] == '{"image": 3}'


def test_deletion_is_never_blocked_by_a_stopped_operator(kube, ns, operator):
    with StatusKubelet(kube.api(), ns):
        apply(kube, ns, secret(), endpoint(), installation())
        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                     "--timeout=60s")
    operator.kill()
    kube.kubectl("delete", "-n", ns, "xrv/triage", "mep/stub", "--timeout=20s")
    wait_for("the garbage collector to remove the children", lambda: not [
        d for d in items(kube, ns, "deployments")] and not items(kube, ns, "jobs")
        and get(kube, ns, "service/triage-dicom") is None, timeout=60)
    apply(kube, ns, secret(), endpoint(), installation(name="second"))
    kube.kubectl("delete", "namespace", ns, "--timeout=60s")  # still no operator


def test_the_charts_namespaced_mode_needs_no_more_than_it_grants(kube, ns, tmp_path):
    """``helm install --set watchNamespaces={NS}``: the operator, as the chart's
    ServiceAccount with its Role in NS and read-only cluster access, reconciles to Ready
    without a single 403 (kopf looks namespaces up; the chart grants that)."""
    from support.kubetools import helm

    release = f"nsmode-{ns[2:]}"
    result = subprocess.run(
        [str(helm()), "install", release, str(ROOT / "charts" / "xrayvision-operator"),
         "--kubeconfig", str(kube.kubeconfig), "--namespace", ns,
         "--set", f"watchNamespaces={{{ns}}}", "--skip-crds"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    try:
        config = kube.token_kubeconfig(f"{release}-xrayvision-operator", ns,
                                       tmp_path / "chart-sa.kubeconfig")
        proc = OperatorProcess(config, ns, tmp_path / "operator.log").start()
        try:
            with StatusKubelet(kube.api(), ns):
                apply(kube, ns, secret(), endpoint(), installation())
                kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                             "--timeout=60s")
        finally:
            proc.stop()
        log = proc.output()
        # a bare 403 as a word: object UIDs in kopf's log may hold the digits
        assert not re.search(r"\b403\b", log) and "Forbidden" not in log, log[-3000:]
    finally:
        subprocess.run([str(helm()), "uninstall", release, "--kubeconfig",
                        str(kube.kubeconfig), "--namespace", ns], capture_output=True)


def test_sigkill_mid_reconcile_converges_without_duplicates(kube, ns, tmp_path):
    """Ten SIGKILLs of the operator at moments spread over its work, each followed by a
    restart; then one more run to the end: one Job, one of each child, Ready."""
    apply(kube, ns, secret(), endpoint(), installation())
    log = tmp_path / "operator.log"
    with StatusKubelet(kube.api(), ns):
        for round_ in range(10):
            proc = OperatorProcess(kube.sa_kubeconfig, ns, log).start()
            time.sleep(1.0 + 0.35 * round_)
            proc.kill()
            if round_ == 4:  # a spec change while the operator is down
                apply(kube, ns, installation(severityThreshold=7))
        proc = OperatorProcess(kube.sa_kubeconfig, ns, log).start()
        try:
            kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                         "--timeout=90s")
            xrv = get(kube, ns, "xrv/triage")
            assert cond(xrv, "Ready")["observedGeneration"] == 2
        finally:
            proc.stop()
    live_jobs = [j for j in items(kube, ns, "jobs") if not j["metadata"].get(
        "deletionTimestamp")]
    assert len(live_jobs) == 1
    names = [d["metadata"]["name"] for d in items(kube, ns, "deployments")]
    assert sorted(names) == ["triage-ingest", "triage-relay", "triage-web"]
    assert get(kube, ns, "configmap/triage-config")["data"][
        "XRAYVISION_PROCESSING_SEVERITY_THRESHOLD"] == "7"
    assert not get(kube, ns, "xrv/triage")["metadata"].get("finalizers")


@pytest.mark.parametrize("kind", ["ServiceMonitor"])
def test_an_optional_crd_installed_later_is_used(kube, ns, operator, kind):
    with StatusKubelet(kube.api(), ns):
        apply(kube, ns, secret(), endpoint(), installation(
            metrics={"serviceMonitor": {"enabled": True}}))
        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                     "--timeout=60s")
        assert get(kube, ns, "servicemonitors") is None  # the kind is not served yet
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
               "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                        "names": {"plural": "servicemonitors", "singular": "servicemonitor",
                                  "kind": kind, "listKind": f"{kind}List"},
                        "versions": [{"name": "v1", "served": True, "storage": True,
                                      "schema": {"openAPIV3Schema": {
                                          "type": "object",
                                          "x-kubernetes-preserve-unknown-fields": True}}}]}}
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(crd))
        try:
            found = wait_for("the ServiceMonitor", lambda: (
                r := kube.kubectl("get", "-n", ns, "servicemonitors", "-o", "json",
                                  check=False)).returncode == 0
                and json.loads(r.stdout)["items"], timeout=40)
            assert found[0]["metadata"]["name"] == "triage"
        finally:
            kube.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com",
                         "--wait=false")


def test_an_api_server_away_at_start_and_mid_run_is_waited_for(kube, ns, tmp_path):
    """The operator reaches the API server through a proxy the test cuts: away at start,
    it keeps retrying and /readyz says 503 with the error; back, it reconciles; away
    mid-run, a spec change made meanwhile lands once it is back."""
    import urllib.error
    import urllib.request

    from support.kubecluster import kubeconfig_text
    from support.tcpproxy import TcpProxy

    def ready() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{probe}/readyz", timeout=3) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    token = kube.sa_kubeconfig.read_text().split("token: ")[1].split()[0]
    probe = free_port()
    with TcpProxy(("127.0.0.1", kube.plane.port)) as proxy:
        config = tmp_path / "proxied.kubeconfig"
        config.write_text(kubeconfig_text(f"https://127.0.0.1:{proxy.port}",
                                          kube.plane.pki["ca.crt"], token=token))
        proxy.cut()
        proc = OperatorProcess(config, ns, tmp_path / "operator.log", "--probe-port",
                               str(probe), "--resync-seconds", "5").start()
        try:
            wait_for("readiness 503", lambda: ready() == 503, timeout=30)
            apply(kube, ns, secret(), endpoint(), installation())
            time.sleep(12)
            assert proc.proc.poll() is None, proc.output()[-2000:]  # still trying
            assert items(kube, ns, "deployments") == []
            proxy.restore()
            wait_for("readiness 200", lambda: ready() == 200, timeout=30)
            wait_for("the installation", lambda: len(items(kube, ns, "deployments")) == 3,
                     timeout=60)
            proxy.cut()
            wait_for("readiness 503 again", lambda: ready() == 503, timeout=30)
            apply(kube, ns, installation(severityThreshold=9))
            time.sleep(15)
            proxy.restore()
            wait_for("the change made while it was away", lambda: get(
                kube, ns, "configmap/triage-config")["data"][
                "XRAYVISION_PROCESSING_SEVERITY_THRESHOLD"] == "9", timeout=90)
            wait_for("readiness 200 again", lambda: ready() == 200, timeout=30)
            assert "does not answer" in proc.output()
        finally:
            proc.stop()


def test_an_apply_refused_by_admission_is_degraded_with_an_event(kube, ns, operator):
    """A ValidatingAdmissionPolicy (the cluster's own rule) refuses the operator's
    Deployments with more than one replica: the spec that asks for two is Degraded
    (ApplyFailed, the API server's message), one Warning Event, Ready False."""
    policy = f"deny-replicas-{ns}"
    docs = [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": policy},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{
                      "apiGroups": ["apps"], "apiVersions": ["v1"],
                      "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                  "validations": [{"expression": "object.spec.replicas <= 1",
                                   "message": "site policy: one replica per Deployment"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": policy},
         "spec": {"policyName": policy, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": ns}}}}}]
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    try:
        with StatusKubelet(kube.api(), ns):
            apply(kube, ns, secret(), endpoint(), installation())
            kube.kubectl("wait", "-n", ns, "--for=condition=Ready", "xrv/triage",
                         "--timeout=60s")
            time.sleep(2)  # the policy is enforced once its binding is seen
            apply(kube, ns, installation(components={"web": {"replicas": 2}}))
            xrv = wait_for("ApplyFailed", lambda: (x := get(kube, ns, "xrv/triage"))
                           and cond(x, "Degraded").get("reason") == "ApplyFailed" and x)
        message = cond(xrv, "Degraded")["message"]
        assert "Deployment triage-web" in message and "one replica per Deployment" in message
        assert cond(xrv, "Ready")["status"] == "False"
        assert get(kube, ns, "deployment/triage-web")["spec"]["replicas"] == 1
        time.sleep(6)  # a resync later: the same failure is not posted again
        failed = [e for e in events(kube, ns, "triage") if e["reason"] == "ApplyFailed"]
        assert len(failed) == 1 and failed[0]["type"] == "Warning"
    finally:
        kube.kubectl("delete", "-f", "-", stdin=yaml.safe_dump_all(docs), check=False)


def test_a_handler_failure_is_posted_as_an_event(kube, ns, operator, tmp_path):
    """A broken admission webhook (the API server answers 500 for ConfigMaps in this
    namespace) makes the handler fail: kopf retries, and the failure is an Event on the
    XRayVision (kubectl describe shows it)."""
    import http.server
    import ssl
    import threading

    cert, key = kube.plane.pki.issue_server(f"webhook-{ns}")

    class Broken(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ca = kube.plane.pki.files["ca.crt"].read_bytes()
    import base64

    hook = {"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration", "metadata": {"name": f"broken-{ns}"},
            "webhooks": [{
                "name": "broken.xrayvision.test", "admissionReviewVersions": ["v1"],
                "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 5,
                "clientConfig": {"url": f"https://127.0.0.1:{server.server_port}/",
                                 "caBundle": base64.b64encode(ca).decode()},
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}]}]}
    apply(kube, ns, secret(), endpoint())
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(hook))
    try:
        time.sleep(2)  # the webhook is called once the API server has seen it
        apply(kube, ns, installation())
        posted = wait_for("the failure as an Event", lambda: [
            e for e in events(kube, ns, "triage") if "failed" in e["message"]], timeout=60)
        assert "500" in posted[0]["message"] or "webhook" in posted[0]["message"]
        xrv = wait_for("the error in the status", lambda: (x := get(kube, ns, "xrv/triage"))
                       and cond(x, "Degraded").get("reason") == "ReconcileError" and x)
        assert "webhook" in cond(xrv, "Degraded")["message"]
    finally:
        kube.kubectl("delete", "validatingwebhookconfiguration", f"broken-{ns}",
                     check=False)
        server.shutdown()
    wait_for("recovery once the webhook is gone", lambda: len(
        items(kube, ns, "deployments")) == 3, timeout=90)


def test_a_model_endpoints_probe_verdicts_show_in_its_status(kube, ns, tmp_path):
    """The ModelEndpoint's ProbesPassing condition says what the known-answer probes of
    the XRayVision reading with it found (its pods' GET /model-probes), as kubectl shows
    it: Unknown before any verdict, False with the reason, True once it passes."""
    import http.server
    import threading

    from xrayvision.ai.probes import CaseResult, Verdict

    served: dict[str, list] = {"verdicts": []}

    class Pods(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            body = json.dumps(served).encode()
            self.send_response(200 if self.path == f"/{ns}/triage/model-probes" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pods)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    operator = OperatorProcess(
        kube.sa_kubeconfig, ns, tmp_path / "operator.log", "--resync-seconds", "2",
        "--verdicts-url",
        f"http://127.0.0.1:{server.server_address[1]}/{{namespace}}/{{name}}/model-probes",
    ).start()
    try:
        apply(kube, ns, secret(), endpoint(url="http://127.0.0.1:9/v1"), installation())
        unknown = wait_for("ProbesPassing Unknown", lambda: cond(
            get(kube, ns, "modelendpoint/stub"), "ProbesPassing").get("status") == "Unknown"
            and cond(get(kube, ns, "modelendpoint/stub"), "ProbesPassing"))
        assert unknown["reason"] == "NotProbed"

        def verdict(passed, reason=""):
            return Verdict("primary", "http://127.0.0.1:9", "m", passed, reason,
                           "2026-12-03T10:00:00+00:00", "0b69572e3997",
                           (CaseResult("normal chest", passed, (reason,) if reason else (),
                                       9 if reason else 0, 2.0),)).as_dict()

        served["verdicts"] = [verdict(False, "normal chest: severity 9, expected 0-3")]
        failing = wait_for("ProbesPassing False", lambda: (c := cond(
            get(kube, ns, "modelendpoint/stub"), "ProbesPassing")).get("status") == "False"
            and c)
        assert failing["reason"] == "ProbesFailing"
        assert failing["message"] == ("triage (primary): normal chest: severity 9, "
                                      "expected 0-3")
        listed = kube.kubectl("get", "-n", ns, "modelendpoints").stdout
        assert re.search(r"PROBES", listed) and re.search(r"stub\s.*\bFalse\b", listed)

        served["verdicts"] = [verdict(True)]
        passing = wait_for("ProbesPassing True", lambda: (c := cond(
            get(kube, ns, "modelendpoint/stub"), "ProbesPassing")).get("status") == "True"
            and c)
        assert passing["reason"] == "ProbesPassing"
        assert "triage (primary) at 2026-12-03T10:00:00+00:00" in passing["message"]
        assert passing["lastTransitionTime"] >= failing["lastTransitionTime"]
    finally:
        operator.stop()
        server.shutdown()
