"""The Grafana dashboard: variables, no hard-coded data source, every PromQL expression
parses (promtool) and reads only metrics the code registers."""

import json
import shutil
import subprocess

import yaml

from conftest import ROOT
from deploy.metricnames import metric_names, registered

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    return expr.replace("$namespace", ".*").replace("$instance", ".*")


def test_variables_and_data_sources():
    assert DASHBOARDS
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert {"namespace", "instance"} <= set(variables)
        text = path.read_text()
        uids = {p["datasource"]["uid"] for p in dash["panels"]}
        uids |= {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
        assert uids == {"${datasource}"}, path.name
        assert '"uid": "prometheus"' not in text


def test_panels_cover_what_operations_need():
    titles = " | ".join(p["title"].lower() for path in DASHBOARDS
                        for p in json.loads(path.read_text())["panels"])
    for needed in ("queue depth", "received per minute", "processed per minute",
                   "model latency", "endpoints up", "failovers", "severity", "agreement",
                   "dicom associations", "dicom instance failures", "fhir poll",
                   "http latency", "http errors", "operator reconciles"):
        assert needed in titles, needed


def test_every_expression_parses(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": concrete(e)}
        for path in DASHBOARDS for i, e in enumerate(expressions(json.loads(path.read_text())))
    ]}]}
    target = tmp_path / "exprs.yaml"
    target.write_text(yaml.safe_dump(rules))
    result = subprocess.run([PROMTOOL, "check", "rules", str(target)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expressions_read_only_registered_metrics():
    known = registered()
    for path in DASHBOARDS:
        for expr in expressions(json.loads(path.read_text())):
            assert metric_names(expr) - known == set(), expr
