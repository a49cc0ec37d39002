import subprocess
import sys
from pathlib import Path

OPERATOR = Path(sys.executable).with_name("xrayvision-operator")


def test_help():
    result = subprocess.run([str(OPERATOR), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--namespace" in result.stdout


def test_without_a_cluster_it_says_so(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "no")}
    result = subprocess.run([str(OPERATOR), "--metrics-port", "0"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "no Kubernetes configuration" in result.stderr and "KUBECONFIG" in result.stderr
