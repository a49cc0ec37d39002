"""docs/install.md as a new user follows it, on a fresh control plane: every command of
its sections 1 and 2 run as written (bash, from the repository root, with kubectl 1.32
and Helm 3 first on PATH), the operator the chart installed running as its ServiceAccount
(a local process: no container runtime here) and pods marked by the status kubelet, up
to ``kubectl wait --for=condition=Ready``."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import ROOT
from operator_pkg.conftest import OperatorProcess
from support.kubecluster import Cluster, ControlPlane, assets_reason
from support.kubelet import StatusKubelet
from support.kubetools import helm, kubectl

REASON = assets_reason()


def commands(markdown: str, sections: tuple[str, ...]) -> list[str]:
    """The shell commands of the ```sh blocks of those sections (continuations joined,
    comments dropped)."""
    found = []
    for part in re.split(r"\n(?=## )", markdown):
        if not part.startswith(sections):
            continue
        for block in re.findall(r"```sh\n(.*?)```", part, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line:
                    found.append(line)
    return found


@pytest.mark.skipif(bool(REASON), reason=REASON or "assets present")
@pytest.mark.timeout(600)
def test_install_doc_commands_work_as_written(tmp_path):
    steps = commands((ROOT / "docs" / "install.md").read_text(),
                     ("## 1.", "## 2."))
    assert any(s.startswith("helm install") for s in steps)
    assert any(" wait " in s for s in steps)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "kubectl").symlink_to(kubectl())
    (tools / "helm").symlink_to(helm())
    plane = ControlPlane().start()
    operator = None
    try:
        cluster = Cluster(plane)
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig),
               "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
               "HOME": str(tmp_path)}
        for step in steps:
            if " wait " in step:  # the operator and the pods, as the cluster would run them
                config = cluster.token_kubeconfig("xrayvision-operator", "xrayvision-system",
                                                  tmp_path / "operator.kubeconfig")
                operator = OperatorProcess(config, "radiology", tmp_path / "operator.log")
                operator.argv.remove("--namespace")
                operator.argv.remove("radiology")  # the chart's default: cluster-wide
                operator.start()
                with StatusKubelet(cluster.api(), "radiology"):
                    result = subprocess.run(["bash", "-ec", step], cwd=ROOT, env=env,
                                            capture_output=True, text=True, timeout=240)
            else:
                result = subprocess.run(["bash", "-ec", step], cwd=ROOT, env=env,
                                        capture_output=True, text=True, timeout=240)
            assert result.returncode == 0, (step, result.stdout, result.stderr,
                                            operator.output()[-3000:] if operator else "")
    finally:
        if operator is not None:
            operator.stop()
        plane.stop()
