"""Pure builders: spec fields and defaults -> objects; CRD schemas and CEL rules;
examples valid."""

import copy

import pytest

from operator_pkg.crds import examples, validate, with_server_fields
from xrayvision_operator.build import (
    CONFIG_HASH,
    MANAGER,
    Resolved,
    SpecError,
    build_model_endpoint,
    build_xrayvision,
    images_per_prompt,
    runtime_env,
    served_model,
    vllm_url,
)

MINIMAL = {"apiVersion": "xrayvision.io/v1alpha1", "kind": "XRayVision",
           "metadata": {"name": "triage"},
           "spec": {"image": "xrv:1", "database": {"secretRef": {"name": "db"}},
                    "model": {"primary": {"url": "http://m:8000", "model": "mg"}}}}
RESOLVED = Resolved(primary_url="http://m:8000", primary_model="mg",
                    database_secret=("db", "url"))


def build(spec_changes=None, resolved=RESOLVED):
    xrv = copy.deepcopy(MINIMAL)
    xrv["spec"].update(spec_changes or {})
    return {(o["kind"], o["metadata"]["name"]): o
            for o in build_xrayvision(with_server_fields(xrv), resolved)}


def test_minimal_spec_builds_with_defaults():
    objs = build()
    kinds = sorted(k for k, _ in objs)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Job",
                     "Service", "Service", "Service"]  # no fhir section: no fhir Deployment
    metrics = objs[("Service", "triage-metrics")]
    assert metrics["spec"]["selector"] == {"app.kubernetes.io/instance": "triage",
                                           "app.kubernetes.io/managed-by": MANAGER}
    config = objs[("ConfigMap", "triage-config")]["data"]
    assert config["XRAYVISION_AI_PRIMARY_URL"] == "http://m:8000"
    assert config["XRAYVISION_DICOM_AE_TITLE"] == "XRAYVISION"
    assert config["XRAYVISION_DICOM_PORT"] == "11112"
    assert config["XRAYVISION_PROCESSING_SEVERITY_THRESHOLD"] == "5"
    assert config["XRAYVISION_IMAGES_BACKEND"] == "database"
    dicom = objs[("Service", "triage-dicom")]["spec"]
    assert dicom["type"] == "LoadBalancer" and dicom["ports"][0]["port"] == 11112
    for obj in objs.values():
        meta = obj["metadata"]
        assert meta["namespace"] == "radiology"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == MANAGER
        assert meta["labels"]["app.kubernetes.io/instance"] == "triage"
        assert meta["ownerReferences"][0]["uid"] == "uid-triage"
        assert meta["ownerReferences"][0]["controller"] is True


def test_deployments_are_hardened_and_probed():
    relay = build()[("Deployment", "triage-relay")]
    pod = relay["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["serve", "--roles", "relay"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["env"] == [{"name": "XRAYVISION_DATABASE_URL", "valueFrom": {
        "secretKeyRef": {"name": "db", "key": "url"}}}]
    assert relay["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "triage", "app.kubernetes.io/component": "relay"}


def test_secrets_are_referenced_never_copied():
    objs = build({"fhir": {"url": "https://his/fhir", "credentialsSecret": {"name": "his"}},
                  "web": {"usersSecret": {"name": "users"}}})
    text = repr(objs[("ConfigMap", "triage-config")])
    assert "his" not in text.replace("https://his/fhir", "")
    fhir = objs[("Deployment", "triage-fhir")]["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in fhir["env"]}
    assert refs["XRAYVISION_FHIR_PASSWORD"] == {"name": "his", "key": "password"}
    web = objs[("Deployment", "triage-web")]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "users"}, "prefix": "XRAYVISION_USERS_"} in web["envFrom"]


def test_the_his_identifier_system_and_report_filters_reach_the_config(tmp_path):
    """Absent: the application's defaults (nothing set); an empty system or list: "any"
    there, so it is passed as an empty value, not left out; the settings read it back."""
    from xrayvision.config import IMAGING_CATEGORIES, load_settings

    data = build({"fhir": {"url": "https://his/fhir"}})[("ConfigMap", "triage-config")]["data"]
    assert not {k for k in data if k.startswith(("XRAYVISION_FHIR_IDENTIFIER",
                                                 "XRAYVISION_FHIR_REPORT"))}
    data = build({"fhir": {"url": "https://his/fhir", "identifierSystem": "",
                           "reportCategories": [],
                           "reportCodes": ["http://loinc.org|36643-5", "30746-2"]}})[
        ("ConfigMap", "triage-config")]["data"]
    assert data["XRAYVISION_FHIR_IDENTIFIER_SYSTEM"] == ""
    assert data["XRAYVISION_FHIR_REPORT_CATEGORIES"] == ""
    assert data["XRAYVISION_FHIR_REPORT_CODES"] == "http://loinc.org|36643-5,30746-2"
    fhir = load_settings(tmp_path, env={k: v for k, v in data.items()
                                        if k.startswith("XRAYVISION_FHIR_")}).fhir
    assert (fhir.identifier_system, fhir.report_categories, fhir.report_codes) == (
        "", (), ("http://loinc.org|36643-5", "30746-2"))
    assert load_settings(tmp_path, env={}).fhir.report_categories == IMAGING_CATEGORIES


def test_results_destinations_reach_the_relay(tmp_path):
    """spec.results: the application reads the ConfigMap back as its [results]; the
    HIS credentials come from their Secret; the PACS's TLS Secret is mounted in the
    relay only (the sender runs there)."""
    from xrayvision.config import DicomPeer, load_settings

    objs = build({"results": {
        "dicom": {"host": "pacs.hospital", "port": 104, "aeTitle": "PACS",
                  "secondaryCapture": True,
                  "tlsSecret": {"name": "pacs-tls", "clientCertificate": True}},
        "fhir": {"url": "https://his/fhir", "credentialsSecret": {"name": "his"}},
        "uidRoot": "1.2.40.0.13.1", "maxAttempts": 5}})
    data = objs[("ConfigMap", "triage-config")]["data"]
    results = load_settings(tmp_path, env={k: v for k, v in data.items()
                                           if k.startswith("XRAYVISION_RESULTS_")}).results
    assert results.dicom_destination == DicomPeer("PACS", "pacs.hospital", 104)
    assert (results.fhir_url, results.uid_root, results.max_attempts) == (
        "https://his/fhir", "1.2.40.0.13.1.", 5)
    assert results.secondary_capture is True
    assert str(results.dicom_tls_ca).endswith("/ca.crt")
    assert str(results.dicom_tls_key).endswith("/tls.key")
    relay = objs[("Deployment", "triage-relay")]["spec"]["template"]["spec"]
    container = relay["containers"][0]
    assert {"name": "results-tls", "secret": {"secretName": "pacs-tls"}} in relay["volumes"]
    assert any(m["name"] == "results-tls" for m in container["volumeMounts"])
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
                  if "valueFrom" in e}
    assert secret_env["XRAYVISION_RESULTS_FHIR_PASSWORD"] == {"name": "his", "key": "password"}
    web = objs[("Deployment", "triage-web")]["spec"]["template"]["spec"]
    assert all(v["name"] != "results-tls" for v in web["volumes"])
    assert not {k for k in build()[("ConfigMap", "triage-config")]["data"]
                if k.startswith("XRAYVISION_RESULTS_")}


def test_config_change_rolls_the_pods():
    before = build()[("Deployment", "triage-relay")]
    after = build({"severityThreshold": 7})[("Deployment", "triage-relay")]
    hashes = [d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]
              for d in (before, after)]
    assert hashes[0] != hashes[1]
    same = build()[("Deployment", "triage-relay")]
    assert same["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH] == hashes[0]


def test_every_optional_field():
    objs = build({
        "storage": {"images": {"type": "pvc", "size": "100Gi", "storageClassName": "fast",
                               "accessMode": "ReadWriteMany"}},
        "dicom": {"aeTitle": "XRV", "port": 104, "serviceType": "LoadBalancer",
                  "loadBalancerSourceRanges": ["10.0.0.0/8"], "externalTrafficPolicy": "Local",
                  "annotations": {"lb/internal": "true"}, "allowedCallingAETitles": ["PACS"],
                  "pacs": {"host": "pacs", "port": 4242, "aeTitle": "ORTHANC"}},
        "web": {"host": "xrv.example", "ingressClassName": "nginx", "tlsSecretName": "tls",
                "annotations": {"a": "b"}},
        "notifications": {"ntfy": {"url": "https://ntfy.example"}},
        "prompts": {"configMapName": "my-prompts"},
        "regions": {"configMapName": "my-regions"},
        "networkPolicy": {"enabled": True},
        "components": {"web": {"replicas": 3, "nodeSelector": {"zone": "a"},
                               "resources": {"limits": {"memory": "2Gi"}}}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    }, resolved=Resolved(primary_url="http://m", secondary_url="http://s",
                         secondary_model="s-model", database_secret=("db", "url"),
                         service_monitors=True))
    config = objs[("ConfigMap", "triage-config")]["data"]
    assert config["XRAYVISION_AI_SECONDARY_URL"] == "http://s"
    assert config["XRAYVISION_DICOM_ALLOWED_CALLING_AETS"] == "PACS"
    assert config["XRAYVISION_PACS_HOST"] == "pacs"
    assert config["XRAYVISION_IMAGES_BACKEND"] == "filesystem"
    assert config["XRAYVISION_NOTIFY_DASHBOARD_URL"] == "https://xrv.example"
    assert config["XRAYVISION_AI_PROMPTS_DIR"] == "/etc/xrayvision/prompts"
    pvc = objs[("PersistentVolumeClaim", "triage-images")]["spec"]
    assert pvc["storageClassName"] == "fast" and pvc["accessModes"] == ["ReadWriteMany"]
    svc = objs[("Service", "triage-dicom")]
    assert svc["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["metadata"]["annotations"] == {"lb/internal": "true"}
    ing = objs[("Ingress", "triage")]
    assert ing["spec"]["tls"] == [{"hosts": ["xrv.example"], "secretName": "tls"}]
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
    assert ing["metadata"]["annotations"]["a"] == "b"
    web = objs[("Deployment", "triage-web")]
    assert web["spec"]["replicas"] == 3
    assert web["spec"]["template"]["spec"]["nodeSelector"] == {"zone": "a"}
    assert objs[("PodDisruptionBudget", "triage-web")]["spec"]["maxUnavailable"] == 1
    assert objs[("ServiceMonitor", "triage")]["metadata"]["labels"]["release"] == "prom"
    assert objs[("ServiceMonitor", "triage")]["spec"]["selector"]["matchLabels"][
        "app.kubernetes.io/component"] == "metrics"
    relay = objs[("Deployment", "triage-relay")]["spec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "my-regions"}, "prefix": "XRAYVISION_REGIONS_"} in \
        relay["envFrom"]
    policy = objs[("NetworkPolicy", "triage")]["spec"]
    assert [p["port"] for p in policy["ingress"][0]["ports"]] == [8080, 104]


def test_service_monitor_only_when_the_crd_exists():
    objs = build({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert not any(kind == "ServiceMonitor" for kind, _ in objs)


@pytest.mark.parametrize("resolved,message", [
    (Resolved(primary_url="http://m"), "no database"),
    (Resolved(database_secret=("db", "url")), "resolves to no URL"),
])
def test_unbuildable_specs_say_why(resolved, message):
    with pytest.raises(SpecError, match=message):
        build(resolved=resolved)


def test_managed_vllm_endpoint():
    mep = with_server_fields({"apiVersion": "xrayvision.io/v1alpha1", "kind": "ModelEndpoint",
                              "metadata": {"name": "medgemma"},
                              "spec": {"vllm": {"hfTokenSecret": {"name": "hf", "key": "t"},
                                                "gpus": 2, "extraArgs": ["--enforce-eager"],
                                                "runtimeClassName": "nvidia"}}})
    objs = {o["kind"]: o for o in build_model_endpoint(mep)}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][:4] == ["--model", "google/medgemma-4b-it", "--served-model-name",
                             "google/medgemma-4b-it"]
    assert "--enforce-eager" in c["args"] and "8192" in c["args"] and "0.9" in c["args"]
    limit = c["args"].index("--limit-mm-per-prompt")
    assert c["args"][limit + 1] == '{"image": 4}'  # several images per study read
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}} \
        in c["env"]
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert pod["runtimeClassName"] == "nvidia"
    assert objs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert vllm_url(mep) == "http://medgemma-vllm.radiology.svc:8000"
    assert served_model(mep) == "google/medgemma-4b-it"
    url_mep = with_server_fields({"apiVersion": "xrayvision.io/v1alpha1",
                                  "kind": "ModelEndpoint", "metadata": {"name": "ext"},
                                  "spec": {"url": "http://gpu:8000", "model": "m"}})
    assert build_model_endpoint(url_mep) == [] and served_model(url_mep) == "m"


def vllm_args(vllm):
    """The managed vLLM's command line for a ModelEndpoint's ``spec.vllm``."""
    mep = with_server_fields({"apiVersion": "xrayvision.io/v1alpha1",
                              "kind": "ModelEndpoint", "metadata": {"name": "m"},
                              "spec": {"vllm": vllm}})
    deployment = next(o for o in build_model_endpoint(mep) if o["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_images_per_prompt_from_the_spec_unless_extra_args_set_it():
    args = vllm_args

    assert args({"maxImagesPerPrompt": 8})[-2:] == ["--limit-mm-per-prompt", '{"image": 8}']
    own = args({"maxImagesPerPrompt": 8, "extraArgs": ['--limit-mm-per-prompt={"image":2}']})
    assert "--limit-mm-per-prompt" not in own
    assert own[-1] == '--limit-mm-per-prompt={"image":2}'


# --- schemas and CEL rules ---------------------------------------------------------------


def test_examples_are_valid():
    found = [d for d in examples() if d["kind"] in ("XRayVision", "ModelEndpoint")]
    assert len(found) == 6  # examples/*.yaml: 3 ModelEndpoints, 3 XRayVisions
    for doc in found:
        assert validate(doc["kind"], doc) == [], doc["metadata"]["name"]


@pytest.mark.parametrize("kind,spec,message", [
    ("ModelEndpoint", {"url": "http://a", "vllm": {}}, "exactly one of spec.url"),
    ("ModelEndpoint", {}, "exactly one of spec.url"),
    ("XRayVision", {"image": "x", "model": {"primary": {"url": "http://a",
                                                        "modelEndpoint": "m"}}},
     "exactly one of modelEndpoint or url"),
    ("XRayVision", {"image": "x", "model": {"primary": {"url": "http://a"}},
                    "web": {"tlsSecretName": "t"}}, "tlsSecretName needs spec.web.host"),
    ("XRayVision", {"image": "x", "model": {"primary": {"url": "http://a"}},
                    "dicom": {"serviceType": "ClusterIP",
                              "loadBalancerSourceRanges": ["10.0.0.0/8"]}},
     "applies only to serviceType LoadBalancer"),
    ("XRayVision", {"image": "x", "model": {"primary": {"url": "http://a"}},
                    "storage": {"images": {"type": "pvc"}}}, "size is required"),
    ("XRayVision", {"image": "x", "model": {"primary": {"url": "http://a"}},
                    "storage": {"images": {"type": "pvc", "size": "1Gi",
                                           "accessMode": "ReadWriteOnce"}},
                    "components": {"ingest": {"replicas": 2}}}, "at most one ingest replica"),
    ("XRayVision", {"image": "x", "model": {"primary": {"url": "http://a"}},
                    "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
     "must not exceed maxReplicas"),
])
def test_every_cel_rule_rejects_its_invalid_case(kind, spec, message):
    doc = {"apiVersion": "xrayvision.io/v1alpha1", "kind": kind,
           "metadata": {"name": "x"}, "spec": spec}
    assert any(message in e for e in validate(kind, doc))


@pytest.mark.parametrize("spec,message", [
    ({"model": {"primary": {"url": "http://a"}}}, "'image' is a required property"),
    ({"image": "x", "model": {"primary": {"url": "ftp://a"}}}, "does not match"),
    ({"image": "x", "model": {"primary": {"url": "http://a"}}, "severityThreshold": 11},
     "greater than the maximum"),
    ({"image": "x", "model": {"primary": {"url": "http://a"}},
      "dicom": {"aeTitle": "A" * 17}}, "is too long"),
    ({"image": "x", "model": {"primary": {"url": "http://a"}},
      "dicom": {"serviceType": "Magic"}}, "is not one of"),
])
def test_schema_bounds(spec, message):
    doc = {"apiVersion": "xrayvision.io/v1alpha1", "kind": "XRayVision",
           "metadata": {"name": "x"}, "spec": spec}
    assert any(message in e for e in validate("XRayVision", doc))


def test_covers():
    from xrayvision_operator.build import covers

    desired = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
               "data": {"a": "1"}}
    live = {**desired, "metadata": {"name": "c", "resourceVersion": "9"},
            "data": {"a": "1", "extra": "x"}}
    assert covers(live, desired)
    assert not covers({**live, "data": {"a": "2"}}, desired)
    assert not covers(None, desired)
    assert covers({"l": [{"a": 1, "b": 2}]}, {"l": [{"a": 1}]})
    assert not covers({"l": [{"a": 1}, {"a": 2}]}, {"l": [{"a": 1}]})


def test_relay_autoscaling_with_keda():
    spec = {"autoscaling": {"enabled": True, "maxReplicas": 6, "queuedPerReplica": 10}}
    without = build(spec)
    assert not any(kind == "ScaledObject" for kind, _ in without)  # no KEDA CRDs
    assert without[("Deployment", "triage-relay")]["spec"]["replicas"] == 1
    objs = build(spec, resolved=Resolved(**{**RESOLVED.__dict__, "keda": True}))
    scaled = objs[("ScaledObject", "triage-relay")]["spec"]
    assert scaled["scaleTargetRef"] == {"name": "triage-relay"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 6)
    depth, age = scaled["triggers"]
    assert "xrayvision_queue_depth" in depth["metadata"]["query"]
    assert depth["metadata"]["threshold"] == "10"
    assert age["metadata"]["threshold"] == "300"
    assert "replicas" not in objs[("Deployment", "triage-relay")]["spec"]
    assert objs[("Deployment", "triage-web")]["spec"]["replicas"] == 1


@pytest.mark.parametrize("images", [None, {"type": "pvc", "size": "10Gi"}])
def test_ingest_streams_received_files_onto_the_images_mount(images):
    objs = build({"storage": {"images": images}} if images else {})
    ingest = objs[("Deployment", "triage-ingest")]["spec"]["template"]["spec"]["containers"][0]
    tmpdir = {e["name"]: e.get("value") for e in ingest["env"]}["TMPDIR"]
    # The deepest mount holding TMPDIR must be the one holding the image store, so that
    # a received file is renamed into the store (another mount would mean a copy).
    mounts = sorted((m["mountPath"] for m in ingest["volumeMounts"]), key=len, reverse=True)
    store = "/var/lib/xrayvision/images"
    assert next(m for m in mounts if tmpdir.startswith(m + "/")) == next(
        m for m in mounts if store == m or store.startswith(m + "/"))
    relay = objs[("Deployment", "triage-relay")]["spec"]["template"]["spec"]["containers"][0]
    assert "TMPDIR" not in {e["name"] for e in relay["env"]}


@pytest.mark.parametrize("vllm,expected", [
    ({}, 4),
    ({"maxImagesPerPrompt": 2}, 2),
    ({"extraArgs": ["--limit-mm-per-prompt", '{"image": 6}']}, 6),
    ({"extraArgs": ['--limit-mm-per-prompt={"image": 3}']}, 3),
    ({"extraArgs": ["--limit-mm-per-prompt", "image=5"]}, 5),
    ({"extraArgs": ["--limit-mm-per-prompt", "{oops"]}, 0),
])
def test_images_per_prompt_follows_what_vllm_is_told(vllm, expected):
    assert images_per_prompt({"spec": {"vllm": vllm}}) == expected


def test_the_app_never_sends_more_images_than_its_vllm_accepts():
    env = runtime_env({"spec": {}}, Resolved(primary_url="http://m", max_images=2))
    assert env["XRAYVISION_AI_MAX_IMAGES"] == "2"
    assert "XRAYVISION_AI_MAX_IMAGES" not in runtime_env({"spec": {}}, Resolved(
        primary_url="http://m"))  # an external server: the app's setting


def test_shadow_model_and_probes_reach_the_app():
    """spec.model.shadow (resolved like the primary) and spec.probes become settings; a
    probe set ConfigMap is mounted in the relay, which runs the prober."""
    resolved = Resolved(**{**RESOLVED.__dict__, "shadow_url": "http://q4:8000",
                           "shadow_model": "mg-q4"})
    objs = build({"model": {"primary": {"url": "http://m:8000", "model": "mg"},
                            "shadow": {"url": "http://q4:8000", "model": "mg-q4"},
                            "shadowReadsPerMinute": 12},
                  "probes": {"intervalSeconds": 600, "latencyBudgetSeconds": 90,
                             "configMapName": "site-probes"}}, resolved)
    data = objs[("ConfigMap", "triage-config")]["data"]
    assert (data["XRAYVISION_AI_SHADOW_URL"], data["XRAYVISION_AI_SHADOW_MODEL"],
            data["XRAYVISION_AI_SHADOW_RATE"]) == ("http://q4:8000", "mg-q4", "12")
    assert (data["XRAYVISION_PROBES_INTERVAL"], data["XRAYVISION_PROBES_LATENCY_BUDGET"],
            data["XRAYVISION_PROBES_DIR"]) == ("600", "90", "/etc/xrayvision/probes")
    relay = objs[("Deployment", "triage-relay")]["spec"]["template"]["spec"]
    assert {"name": "probes", "configMap": {"name": "site-probes"}} in relay["volumes"]
    web = objs[("Deployment", "triage-web")]["spec"]["template"]["spec"]
    assert all(v["name"] != "probes" for v in web["volumes"])
    assert "XRAYVISION_AI_SHADOW_URL" not in build()[("ConfigMap", "triage-config")]["data"]


def test_managed_vllm_runs_in_bfloat16_unless_told_otherwise():
    args = vllm_args
    default = args({})
    assert default[default.index("--dtype") + 1] == "bfloat16"
    chosen = args({"dtype": "float32"})
    assert chosen[chosen.index("--dtype") + 1] == "float32"
    own = args({"extraArgs": ["--dtype=half"]})
    assert "--dtype" not in own and "--dtype=half" in own


@pytest.mark.parametrize(("seen", "status", "reason", "message"), [
    ([], "Unknown", "NotProbed", "no XRayVision reads with this endpoint"),
    ([("t", "primary", None)], "Unknown", "NotProbed", "t (primary): not reachable"),
    ([("t", "primary", [])], "Unknown", "NotProbed", "t (primary): not probed yet"),
    ([("t", "primary", [{"endpoint": "primary", "url": "http://m:8000/v1", "passed": True,
                         "at": "T"}])], "True", "ProbesPassing",
     "passed the known-answer probes of t (primary) at T"),
    ([("t", "primary", [{"endpoint": "primary", "url": "http://m:8000", "passed": True,
                         "at": "T"}]),
      ("u", "secondary", [{"endpoint": "secondary", "url": "http://m:8000", "passed": False,
                           "reason": "slow"}])], "False", "ProbesFailing", "u (secondary): slow"),
    ([("t", "primary", [{"endpoint": "primary", "url": "http://old:8000", "passed": False,
                         "reason": "x"}])], "Unknown", "NotProbed",
     "t (primary): not probed yet"),  # a verdict about the URL before a change
])
def test_probes_condition(seen, status, reason, message):
    from xrayvision_operator.reconcile import probes_condition

    cond = probes_condition(seen, "http://m:8000", 3)
    assert (cond["type"], cond["status"], cond["reason"], cond["message"]) == (
        "ProbesPassing", status, reason, message)
    assert cond["observedGeneration"] == 3
