"""PACS peers for query/retrieve tests: Orthanc and DCMTK dcmqrscp, each with its own
ports and temporary storage (neither can be told to listen on loopback only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from support.pgserver import free_port


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def storescu(aet: str, port: int, files, *, calling: str = "LOADER") -> None:
    subprocess.run(["storescu", "-aet", calling, "-aec", aet, "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True,
                   env={**os.environ, "TCP_NODELAY": "1"}, timeout=300)


class Orthanc:
    aet = "ORTHANC"

    def __init__(self, folder: Path, destinations: dict[str, tuple[str, int]],
                 port: int | None = None, options: dict | None = None) -> None:
        """``options``: Orthanc configuration entries over these defaults."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = port or free_port()
        self.http_port = free_port()
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {name.lower(): [aet, host, port]
                                for name, (host, port) in destinations.items()
                                for aet in [name]},
            "Plugins": [],
            "StorageCompression": False,
            "DicomScuTimeout": 10,
            **(options or {}),
        }))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        wait_port(self.port)
        return self

    def rest(self, path: str, body: bytes | None = None):
        """Orthanc's REST API: the JSON answer of GET (POST with ``body``) ``path``."""
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/{path.lstrip('/')}",
                                     data=body, method="POST" if body is not None else "GET")
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"[", b"{") else raw

    def study_instances(self, study_uid: str) -> dict[str, list[str]]:
        """The study's instances by modality (their SOP Instance UIDs): what a PACS user
        sees of it."""
        found = [r for r in self.rest("tools/lookup", study_uid.encode())
                 if r["Type"] == "Study"]
        if not found:
            return {}
        out: dict[str, list[str]] = {}
        for series in self.rest(f"studies/{found[0]['ID']}/series"):
            modality = series["MainDicomTags"].get("Modality", "")
            for instance in series["Instances"]:
                tags = self.rest(f"instances/{instance}")["MainDicomTags"]
                out.setdefault(modality, []).append(tags["SOPInstanceUID"])
        return out

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class DcmQrScp:
    aet = "DCMQRSCP"

    def __init__(self, folder: Path, destinations: dict[str, tuple[str, int]]) -> None:
        self.folder = folder
        self.port = free_port()
        storage = folder / "db"
        storage.mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(f"{name.lower()} = ({name}, localhost, {port})"
                          for name, (_host, port) in destinations.items())
        self.config = folder / "dcmqrscp.cfg"
        self.config.write_text(f"""NetworkTCPPort = {self.port}
MaxPDUSize = 16384
MaxAssociations = 16
HostTable BEGIN
{hosts}
loader = (LOADER, localhost, 1)
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
{self.aet} {storage} RW (200, 1024mb) ANY
AETable END
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> DcmQrScp:
        self.proc = subprocess.Popen(["dcmqrscp", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
