"""A real FHIR R4 server for tests and benchmarks: PyPI's ``sekmet-fhir`` on loopback.

Each server gets its own settings file and SQLite database under a directory of its own,
Basic auth, the simulator off (it would answer ServiceRequests with made-up reports) and
``SEKMET_BASE_URL`` set, so the paging links it writes point back at it. Resources are
built by the tests as dicts, validated with the ``fhir.resources`` R4B models (R4B
changed no resource used here from R4; the package has no plain R4 module) and PUT.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class

from support.pgserver import free_port

USER, PASSWORD = "xrv", "fhir-secret"


def sekmet_binary() -> str:
    found = Path(sys.executable).with_name("sekmet")
    return str(found) if found.exists() else (shutil.which("sekmet") or "sekmet")


def validated(resource: dict) -> dict:
    """The resource after a round trip through its ``fhir.resources`` model (raises on a
    resource that is not valid R4)."""
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return json.loads(model.model_dump_json(exclude_none=True))


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode()


class Sekmet:
    def __init__(self, workdir: Path, port: int | None = None,
                 public_url: str | None = None, host: str = "127.0.0.1") -> None:
        """``public_url``: the base URL clients use, when they reach the server through
        something else (a latency proxy); the server's links point there. ``host``: the
        address it listens on (a test bridge's, for pods)."""
        self.workdir = workdir
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}/fhir"
        self.public_url = public_url or self.url
        self.proc: subprocess.Popen | None = None
        self._auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def start(self, timeout: float = 60.0) -> Sekmet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "settings.yaml"
        config.write_text(
            f"base_url: {self.public_url}\nhost: {self.host}\nport: {self.port}\n"
            f"data_dir: {self.workdir / 'data'}\n"
            f"server_auth:\n  types: [basic]\n  users: {{{USER}: {PASSWORD}}}\n"
            "simulator:\n  enabled: false\nlog_inbound: false\n"
        )
        env = {**os.environ, "SEKMET_BASE_URL": self.public_url,
               "SEKMET_CONFIG": str(config)}
        self.log = open(self.workdir / "sekmet.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sekmet_binary(), "serve", "-c", str(config)],
                                     cwd=self.workdir, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sekmet exited at start:\n"
                                   + (self.workdir / "sekmet.log").read_text()[-2000:])
            try:
                self.request("GET", "metadata")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("sekmet did not start in time")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - our own loopback server
            f"{self.url}/{path}".rstrip("/"), data=data, method=method,
            headers={"Authorization": self._auth, "Content-Type": "application/fhir+json",
                     "Accept": "application/fhir+json"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - as above
            return json.loads(resp.read() or b"{}")

    def put(self, resource: dict) -> dict:
        """Creates or updates the resource (validated first); returns the stored one."""
        resource = validated(resource)
        return self.request("PUT", f"{resource['resourceType']}/{resource['id']}", resource)

    def load(self, resources: list[dict], batch: int = 200) -> None:
        """Many resources at once, as transaction bundles of PUTs."""
        for start in range(0, len(resources), batch):
            entries = [{"resource": validated(r),
                        "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                       for r in resources[start:start + batch]]
            self.request("POST", "", {"resourceType": "Bundle", "type": "transaction",
                                      "entry": entries})


def patient(pid: str, cnp: str, family: str, given: str, birth: str, gender: str,
            system: str = "urn:ro:cnp", mrn: str = "") -> dict:
    """A Patient with the CNP in ``system``; ``mrn``: a hospital record number listed
    first, as many HIS exports do."""
    identifiers = [{"system": system, "value": cnp}]
    if mrn:
        identifiers.insert(0, {"system": "urn:oid:1.2.3.4.5.mrn", "value": mrn,
                               "type": {"coding": [{
                                   "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                   "code": "MR"}]}})
    return {"resourceType": "Patient", "id": pid, "identifier": identifiers,
            "name": [{"family": family, "given": [given]}], "birthDate": birth,
            "gender": gender}


def service_request(sid: str, pid: str, accession: str = "", code: str = "Rx torace") -> dict:
    resource = {"resourceType": "ServiceRequest", "id": sid, "status": "completed",
                "intent": "order", "subject": {"reference": f"Patient/{pid}"},
                "code": {"text": code}}
    if accession:
        resource["identifier"] = [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "ACSN"}]},
            "value": accession}]
    return resource


def diagnostic_report(rid: str, pid: str, text: str, *, status: str = "final",
                      when: str = "2026-11-20T10:00:00Z", based_on: str = "",
                      accession: str = "", study_uid: str = "", code: str = "Rx torace",
                      radiologist: str = "Dr. Ionescu", content_type: str = "text/plain",
                      encoding: str = "utf-8", conclusion: str = "",
                      category: str = "RAD", loinc: str = "") -> dict:
    """A DiagnosticReport as a RIS writes it: category ``RAD`` (HL7 v2 diagnostic service
    section; ``LAB`` for a laboratory's), ``code`` as text, with a LOINC coding when
    ``loinc`` is given."""
    resource: dict = {
        "resourceType": "DiagnosticReport", "id": rid, "status": status,
        "code": {"text": code}, "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when, "resultsInterpreter": [{"display": radiologist}],
        "presentedForm": [{"contentType": content_type, "data": b64(text, encoding)}],
    }
    if category:
        resource["category"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": category}]}]
    if loinc:
        resource["code"]["coding"] = [{"system": "http://loinc.org", "code": loinc}]
    identifiers = []
    if accession:
        identifiers.append({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "ACSN"}]},
            "value": accession})
    if study_uid:
        identifiers.append({"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"})
    if identifiers:
        resource["identifier"] = identifiers
    if based_on:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{based_on}"}]
    if conclusion:
        resource["conclusion"] = conclusion
    return resource
