"""The Helm chart with the real Helm binary: lint --strict; template with the default
values and with every toggle on, validated by kubernetes-validate --strict; the values
schema refusing bad values; CRDs, rules, dashboards and RBAC the same as the repo's."""

import subprocess

import kubernetes_validate
import pytest
import yaml

import xrayvision
from conftest import ROOT
from support.kubetools import helm

CHART = ROOT / "charts" / "xrayvision-operator"
CUSTOM = {"ServiceMonitor", "PrometheusRule"}  # kinds of the Prometheus operator's CRDs
ALL_ON = ["--set", "metrics.serviceMonitor.enabled=true",
          "--set", "metrics.serviceMonitor.labels.release=prom",
          "--set", "prometheusRule.enabled=true",
          "--set", "prometheusRule.workingHoursStart=6",
          "--set", "grafanaDashboards.enabled=true",
          "--set", "serviceAccount.annotations.a=b",
          "--set", "verbose=true",
          "--set", "nodeSelector.zone=a",
          # helm template sees no cluster: say that the Prometheus operator's CRDs exist
          "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
          "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]


def run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm()), *args], capture_output=True, text=True, timeout=120)


def template(*args: str) -> list[dict]:
    result = run_helm("template", "xrv", str(CHART), "--namespace", "xrayvision-system",
                      "--include-crds", *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_lint_strict():
    result = run_helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [[], ALL_ON,
                                    ["--set", "watchNamespaces={radiology,er}"]],
                         ids=["defaults", "all-on", "namespaced"])
def test_rendered_objects_are_valid(values):
    docs = template(*values)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "Service", "CustomResourceDefinition"} <= kinds
    for doc in docs:
        if doc["kind"] in CUSTOM:
            continue
        for version in ("1.30.0", kubernetes_validate.latest_version()):
            kubernetes_validate.validate(doc, version, strict=True)


def test_toggles():
    defaults = {d["kind"] for d in template()}
    assert not defaults & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert {"ClusterRole", "ClusterRoleBinding"} <= defaults
    on = template(*ALL_ON)
    by_kind = {}
    for doc in on:
        by_kind.setdefault(doc["kind"], []).append(doc)
    rule = by_kind["PrometheusRule"][0]
    alerts = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    # every alert of deploy/prometheus (the rules promtool tests), none other
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "xrayvision-rules.yaml").read_text())
    assert alerts == [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert "XRayVisionFhirUnhealthy" in alerts
    silent = next(r for r in rule["spec"]["groups"][0]["rules"]
                  if r["alert"] == "XRayVisionIngestSilent")
    assert "hour() >= 6" in silent["expr"] and "{{ $labels.namespace }}" in \
        silent["annotations"]["summary"]
    dashboards = by_kind["ConfigMap"]
    assert dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert by_kind["ServiceMonitor"][0]["metadata"]["labels"]["release"] == "prom"
    args = by_kind["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--verbose" in args
    namespaced = template("--set", "watchNamespaces={radiology,er}")
    roles = [d for d in namespaced if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["er", "radiology"]
    deployment = next(d for d in namespaced if d["kind"] == "Deployment")
    assert "--namespace=radiology" in deployment["spec"]["template"]["spec"]["containers"][0][
        "args"]


@pytest.mark.parametrize("bad", [
    ["--set", "metrics.port=0"], ["--set", "image.pullPolicy=Sometimes"],
    ["--set", "watchNamespaces={Not_A_Namespace}"], ["--set", "unknownKey=1"],
    ["--set", "prometheusRule.workingHoursStart=30"],
])
def test_schema_rejects_bad_values(bad):
    result = run_helm("template", "xrv", str(CHART), *bad)
    assert result.returncode != 0 and "schema" in result.stderr.lower()


def test_chart_copies_match_the_repository():
    for name in ("xrayvision.yaml", "modelendpoint.yaml"):
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes()
    assert (CHART / "files" / "xrayvision-rules.yaml").read_bytes() == (
        ROOT / "deploy" / "prometheus" / "xrayvision-rules.yaml").read_bytes()
    for dash in (ROOT / "deploy" / "grafana").glob("*.json"):
        assert (CHART / "files" / dash.name).read_bytes() == dash.read_bytes()


def test_rbac_matches_deploy_rbac():
    chart_role = next(d for d in template() if d["kind"] == "ClusterRole")
    plain = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text())
                 if d and d["kind"] == "ClusterRole")
    assert chart_role["rules"] == plain["rules"]


def test_app_version_follows_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == xrayvision.__version__
