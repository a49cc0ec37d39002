"""`xrayvision serve --roles web` as a separate process on a given database, for tests
that need real processes (browsers, several pods)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from support.pgserver import free_port

XRAYVISION = Path(sys.executable).parent / "xrayvision"


@contextlib.contextmanager
def web_process(workdir: Path, database_url: str, users: dict[str, str],
                port: int | None = None, **env_extra: str) -> Iterator[str]:
    """Runs a web-only process (on ``port``, else a free one); yields its base URL.
    ``users``: name -> "role:hash"."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}
    env.update({"XRAYVISION_SERVER_ROLES": "web", "XRAYVISION_DATABASE_URL": database_url,
                "XRAYVISION_SERVER_DATA_DIR": str(workdir / "data"),
                "XRAYVISION_WEB_PORT": str(port), "XRAYVISION_SERVER_SHUTDOWN_GRACE": "5",
                **{f"XRAYVISION_USERS_{name.upper()}": spec for name, spec in users.items()},
                **env_extra})
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"web-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(XRAYVISION), "serve"], cwd=workdir, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError("web process exited:\n" + (workdir / f"web-{port}.log")
                                   .read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2):  # noqa: S310
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("web process never became ready") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
