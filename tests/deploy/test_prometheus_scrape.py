"""A real Prometheus (Debian's, loopback, temp storage) scrapes a running
`xrayvision serve`; after a few exams go through the relay, the queries of the main
dashboard panels return data."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from conftest import ROOT
from deploy.test_grafana import DASHBOARDS, concrete, expressions
from support import records
from support.pacs import wait_port
from support.pgserver import free_port
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.migrate import upgrade
from xrayvision.db.models import QUEUED
from xrayvision.db.repo import ExamInfo
from xrayvision.images import FilesystemStore

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
XRAYVISION = Path(sys.executable).with_name("xrayvision")
STUB = ROOT / "tests" / "support" / "model_stub.py"
# Panels whose series exist once exams went through the relay (the others need DICOM
# traffic, FHIR or the operator).
MAIN_PANELS = ("Queue depth by status", "Exams processed per minute",
               "Model latency p50 / p95", "Model endpoints up / active",
               "Model requests by outcome", "HTTP latency p95 by route")


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - loopback
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_prometheus_scrapes_and_dashboard_queries_return_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = Database(DatabaseOptions(url=f"sqlite:///{data / 'xrayvision.db'}"))
    upgrade(db.engine)
    store = FilesystemStore(data / "images")
    for i in range(5):
        uid = f"1.2.3.{i}"
        store.put(uid, "png", b"\x89PNG\r\n\x1a\nfake")
        db.write_sync(records.add_converted, ExamInfo(uid=uid, region="chest", status=QUEUED))
    db.close()
    stub_port, web_port, prom_port = free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, str(STUB), str(stub_port)]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}
        env.update({"XRAYVISION_SERVER_ROLES": "relay,web", "XRAYVISION_SERVER_DATA_DIR":
                    str(data), "XRAYVISION_WEB_PORT": str(web_port),
                    "XRAYVISION_AI_PRIMARY_URL": f"http://127.0.0.1:{stub_port}",
                    "XRAYVISION_AI_HEALTH_INTERVAL": "1"})
        procs.append(subprocess.Popen([str(XRAYVISION), "serve"], cwd=tmp_path, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: xrayvision\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{web_port}']}}]\n")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(prom_port, timeout=60)
        base = f"http://127.0.0.1:{prom_port}"
        wait_ready(base + "/-/ready")
        dash = json.loads(DASHBOARDS[0].read_text())
        panels = {p["title"]: p for p in dash["panels"]}
        deadline = time.monotonic() + 90
        missing = list(MAIN_PANELS)
        while missing and time.monotonic() < deadline:
            missing = [title for title in MAIN_PANELS
                       if not any(query(base, concrete(e))
                                  for e in expressions({"panels": [panels[title]]}))]
            if missing:
                time.sleep(2)
        assert not missing, f"no data for {missing}"
        done = query(base, 'sum(xrayvision_exams_processed_total{outcome="done"})')
        assert float(done[0]["value"][1]) == 5
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
