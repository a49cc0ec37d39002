import subprocess
import sys
from pathlib import Path

from xrayvision.passwords import verify_password

XRAYVISION = Path(sys.executable).parent / "xrayvision"


def run(*args, cwd, env=None, stdin=None):
    return subprocess.run([str(XRAYVISION), *args], cwd=cwd, capture_output=True, text=True,
                          input=stdin, env=env, timeout=60)


def test_hash_password_from_stdin(tmp_path):
    result = run("hash-password", "--stdin", cwd=tmp_path, stdin="correct horse\n")
    assert result.returncode == 0
    stored = result.stdout.strip()
    assert stored.startswith("scrypt$") and verify_password("correct horse", stored)
    assert "correct horse" not in result.stdout


def test_hash_password_without_a_terminal_says_to_use_stdin(tmp_path):
    """Piped (a script, CI, `kubectl exec` without -t): no traceback, the way to do it."""
    result = run("hash-password", cwd=tmp_path, stdin="secret\n")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--stdin" in result.stderr and "secret" not in result.stdout


def test_hash_password_refuses_empty(tmp_path):
    assert run("hash-password", "--stdin", cwd=tmp_path, stdin="\n").returncode == 2


def test_check_config_prints_masked_effective_settings(tmp_path):
    hashed = run("hash-password", "--stdin", cwd=tmp_path, stdin="pw\n").stdout.strip()
    (tmp_path / "local.cfg").write_text(
        f"[ai]\napi_key = sk-live-123\n[users]\nalice = admin:{hashed}\n[web]\nprot = 1\n")
    result = run("check-config", cwd=tmp_path,
                 env={"PATH": "/usr/bin:/bin", "XRAYVISION_FHIR_PASSWORD": "fhir-secret"})
    assert result.returncode == 0
    assert "[ai]" in result.stdout and "api_key = ********" in result.stdout
    assert "alice = admin:********" in result.stdout
    assert "# warning: unknown setting [web] prot" in result.stdout
    for secret in ("sk-live-123", "fhir-secret", hashed):
        assert secret not in result.stdout


def test_check_config_with_corrupt_file(tmp_path):
    (tmp_path / "xrayvision.cfg").write_text("[web\nport=1\n")
    result = run("check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "configuration error: cannot read" in result.stderr


def test_migrate_creates_the_sqlite_database(tmp_path):
    result = run("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "xrayvision.db").is_file()
    assert "database migrated" in result.stderr


def test_migrate_gives_up_on_an_unreachable_database(tmp_path):
    from support.pgserver import free_port

    env = {"PATH": "/usr/bin:/bin",
           "XRAYVISION_DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/x"}
    result = run("migrate", "--timeout", "1", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "database unreachable; giving up" in result.stderr


def test_tmpdir_is_created_before_use(tmp_path):
    from xrayvision.cli import ensure_tmpdir

    ensure_tmpdir({"TMPDIR": str(tmp_path / "images" / ".incoming")})
    assert (tmp_path / "images" / ".incoming").is_dir()
    (tmp_path / "file").write_text("")
    ensure_tmpdir({"TMPDIR": str(tmp_path / "file" / "sub")})  # unusable: no error raised
    assert (tmp_path / "file").is_file()  # left to tempfile's fallback, nothing replaced


def test_serve_creates_its_tmpdir(tmp_path):
    import os

    tmpdir = tmp_path / "images" / ".incoming"
    done = run("check-config", cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmpdir)})
    assert done.returncode == 0, done.stderr
    assert tmpdir.is_dir()


async def test_probe_command_judges_each_endpoint_with_progress(tmp_path):
    """``xrayvision probe``: the probe set through every endpoint (the shadow too), a line
    per case; exit 1 while one answers wrongly, 0 once all pass; a broken set: 2."""
    import asyncio

    from support.model_stub import Stub

    good, wrong = await Stub().start(), await Stub().start()
    wrong.state.mode = "wrong"
    env = {"XRAYVISION_AI_PRIMARY_URL": good.url + "/v1",
           "XRAYVISION_AI_SHADOW_URL": wrong.url, "XRAYVISION_AI_SHADOW_MODEL": "m"}
    try:
        result = await asyncio.to_thread(run, "probe", cwd=tmp_path, env=env)
        assert result.returncode == 1, result.stderr
        out = result.stdout
        assert "probe set" in out and "2 cases" in out
        assert f"primary {good.url} (google/medgemma-4b-it)" in out
        assert "pass  normal chest" in out and "primary passes" in out
        assert "FAIL  normal chest" in out and "severity  9 (expected 0-3)" in out
        assert "shadow FAILS" in out
        only = await asyncio.to_thread(run, "probe", "--endpoint", "primary",
                                       cwd=tmp_path, env=env)
        assert only.returncode == 0 and "shadow" not in only.stdout
        (tmp_path / "set").mkdir()
        broken = await asyncio.to_thread(run, "probe", cwd=tmp_path, env={
            **env, "XRAYVISION_PROBES_DIR": str(tmp_path / "set")})
        assert broken.returncode == 2 and "probes.toml cannot be read" in broken.stderr
    finally:
        await good.stop()
        await wrong.stop()
