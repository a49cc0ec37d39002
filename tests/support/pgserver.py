"""A throw-away PostgreSQL server for tests and benchmarks.

``python tests/support/pgserver.py run -- CMD ...`` starts a fresh cluster on a free
loopback port in a temporary folder, runs CMD with ``XRV_TEST_PG_URL`` set, and always
stops the server and removes the folder afterwards (also on SIGTERM/SIGINT). Tests that
need a server of their own (restart tests) use :class:`PgServer` directly.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the
``postgres`` user (``runuser``) in a folder that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV_VAR = "XRV_TEST_PG_URL"


def find_bindir() -> Path:
    """The folder with initdb/pg_ctl: PG_BINDIR, Debian's layout, or PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found: install the Debian package 'postgresql' "
        "(make test does this when run as root) or set PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, *, fsync: bool = False, also_listen: str = "",
                 trust: str = "") -> None:
        """``also_listen``: another address to listen on (a test bridge's), with
        ``trust``, a CIDR whose clients are trusted (pods on that bridge)."""
        self.also_listen = also_listen
        self.trust = trust
        self.bindir = find_bindir()
        self.fsync = fsync
        self.as_postgres = os.geteuid() == 0
        self.tmp = Path(tempfile.mkdtemp(prefix="xrv-pg-"))
        self.data = self.tmp / "data"
        self.port = free_port()
        self.user = "xrayvision"
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres else cmd

    def _run(self, *args: str) -> None:
        subprocess.run(self._cmd(*args), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    def url(self, database: str = "xrayvision") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgServer:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
            if self.trust:
                with (self.data / "pg_hba.conf").open("a") as hba:
                    hba.write(f"host all all {self.trust} trust\n")
        hosts = ",".join(filter(None, ["127.0.0.1", self.also_listen]))
        opts = (f"-p {self.port} -h {hosts} -k {self.tmp} -c max_connections=200 "
                f"-c fsync={'on' if self.fsync else 'off'} "
                f"-c synchronous_commit={'on' if self.fsync else 'off'} "
                "-c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.tmp / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start")
        self._wait()
        return self

    def _wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start; see {self.tmp / 'server.log'}")

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        out = subprocess.run(
            [str(self.bindir / "psql") if (self.bindir / "psql").exists() else "psql",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout

    def stop(self, mode: str = "fast") -> None:
        if self.data.exists():
            subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(command: list[str]) -> int:
    server = PgServer().start()
    try:
        server.create_database("xrayvision")
        env = dict(os.environ, **{ENV_VAR: server.url()})
        print(f"pgserver: PostgreSQL on 127.0.0.1:{server.port} ({server.tmp})", flush=True)
        child = subprocess.Popen(command, env=env)
        # Forward termination to the command, then fall through to the cleanup below.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: child.send_signal(s))
        return child.wait()
    finally:
        server.destroy()
        print("pgserver: PostgreSQL stopped and removed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "run" or sys.argv[2] != "--":
        print("usage: pgserver.py run -- COMMAND [ARGS...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[3:]))
