"""Alert rules: promtool check and unit tests (a firing and a silent case per alert),
annotations, runbook links, and only metrics the code registers."""

import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT
from deploy.metricnames import metric_names, registered

RULES = ROOT / "deploy" / "prometheus" / "xrayvision-rules.yaml"
TESTS = ROOT / "deploy" / "prometheus" / "xrayvision-rules.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def rules():
    return yaml.safe_load(RULES.read_text())["groups"][0]["rules"]


def test_promtool_checks_and_unit_tests_pass():
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], cwd=TESTS.parent,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    for rule in rules():
        evals = [e for t in cases for e in t["alert_rule_test"]
                 if e["alertname"] == rule["alert"]]
        firing = [e for e in evals if e.get("exp_alerts")]
        assert firing, rule["alert"]
        fired_ns = {a["exp_labels"]["namespace"] for e in firing for a in e["exp_alerts"]}
        series_ns = {m for t in cases for s in t["input_series"]
                     if any(e["alertname"] == rule["alert"] for e in t["alert_rule_test"])
                     for m in re.findall(r'namespace="([^"]+)"', s["series"])}
        assert series_ns - fired_ns, f"{rule['alert']}: no silent case"


def test_annotations_and_runbook_sections():
    anchors = {"#" + h.strip("# ").lower() for h in RUNBOOK.read_text().splitlines()
               if h.startswith("## ")}
    for rule in rules():
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert ann["runbook_url"].split("docs/runbook.md")[1] in anchors, rule["alert"]


def test_rules_read_only_registered_metrics():
    known = registered()
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, (rule["alert"], unknown)


def test_a_broken_expectation_fails(tmp_path):
    """The unit tests can fail: a silent namespace expected to fire is reported."""
    broken = TESTS.read_text().replace("namespace: grow", "namespace: flat", 1)
    (tmp_path / TESTS.name).write_text(broken)
    shutil.copy(RULES, tmp_path / RULES.name)
    run = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode != 0


@pytest.mark.parametrize("name", ["xrayvision_queue_depth", "xrayvision_model_requests_total",
                                  "xrayvision_operator_reconcile_errors_total"])
def test_registry_collection_sees_real_names(name):
    assert name in registered()
