"""Settings: built-in defaults < ``xrayvision.cfg`` < ``local.cfg`` < ``XRAYVISION_*`` env.

Every key is declared once, as a field of a frozen section dataclass below; its
``metadata["parse"]`` turns the raw string into the typed value and raises ``ValueError``
with what was expected. :func:`load_settings` reads and validates everything once and
returns a :class:`Settings` that the process passes down; a bad value raises
:class:`ConfigError` naming the key, the value and what was expected.

Environment variables are ``XRAYVISION_<SECTION>_<KEY>`` (``XRAYVISION_WEB_PORT=9000``).
For the open sections (``users``, ``regions``, ``priority``) the rest of the name is the
entry's name: ``XRAYVISION_USERS_ALICE=radiologist:scrypt$...``.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from xrayvision.passwords import BadHash, parse_hash

ENV_PREFIX = "XRAYVISION_"
CONFIG_FILES = ("xrayvision.cfg", "local.cfg")
ROLES = ("ingest", "relay", "fhir", "web")
USER_ROLES = ("admin", "radiologist", "viewer")
# Exam priority levels, named as FHIR ServiceRequest.priority (plus "normal" = routine).
PRIORITIES = {"routine": 0, "normal": 0, "urgent": 1, "asap": 2, "stat": 3}
MASK = "********"


class ConfigError(Exception):
    """Settings could not be read or a value is invalid; the message says which and why."""


# --- parsers: str -> typed value, ValueError("expected ...") on bad input -----------------


def _str(value: str) -> str:
    return value.strip()


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError(_expect_range("an integer", lo, hi)) from None
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise ValueError(_expect_range("an integer", lo, hi))
        return number

    return parse


def _float(lo: float | None = None, hi: float | None = None) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(_expect_range("a number", lo, hi)) from None
        if number != number or (lo is not None and number < lo) or (
            hi is not None and number > hi
        ):
            raise ValueError(_expect_range("a number", lo, hi))
        return number

    return parse


def _expect_range(kind: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"expected {kind} from {lo} to {hi}"
    if lo is not None:
        return f"expected {kind} >= {lo}"
    if hi is not None:
        return f"expected {kind} <= {hi}"
    return f"expected {kind}"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected a boolean (true/false, yes/no, on/off, 1/0)")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        text = value.strip().lower()
        if text not in options:
            raise ValueError(f"expected one of: {', '.join(options)}")
        return text

    return parse


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def parse_roles(value: str) -> tuple[str, ...]:
    roles = tuple(r.lower() for r in _list(value))
    if value.strip().lower() == "all":
        return ROLES
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ValueError(f"expected a comma-separated subset of: {', '.join(ROLES)} (or 'all')")
    return tuple(dict.fromkeys(roles))


def _path(value: str) -> Path:
    if not value.strip():
        raise ValueError("expected a path")
    return Path(value.strip()).expanduser()


def _optional_path(value: str) -> Path | None:
    return Path(value.strip()).expanduser() if value.strip() else None


def _url(*schemes: str, optional: bool = True) -> Callable[[str], str]:
    def parse(value: str) -> str:
        text = value.strip()
        if not text and optional:
            return ""
        parts = urlsplit(text)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            starts = " or ".join(s + "://" for s in schemes)
            raise ValueError(f"expected a URL starting with {starts}")
        return text.rstrip("/") if parts.scheme.startswith("http") else text

    return parse


VIEWER_FIELDS = ("study_uid", "series_uid", "uid", "accession")


def _viewer_url(value: str) -> str:
    """A diagnostic viewer's address for one study, with ``{study_uid}``, ``{series_uid}``,
    ``{uid}`` (the image's SOP Instance UID) or ``{accession}`` where the study's values go
    (e.g. OHIF: ``https://ohif.example/viewer?StudyInstanceUIDs={study_uid}``)."""
    text = _url("http", "https")(value)
    if not text:
        return ""
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    unknown = names - set(VIEWER_FIELDS)
    if unknown or not names:
        raise ValueError("expected an http(s) URL with one or more of "
                         + ", ".join("{" + f + "}" for f in VIEWER_FIELDS))
    return text


def _model_url(value: str) -> str:
    """A model server's base URL. Written the OpenAI way (``http://host:8000/v1``) or
    without the suffix, it means the same server: ``/v1`` is dropped once here and the
    client adds ``/v1/chat/completions`` (and asks ``/health``, which has no ``/v1``)."""
    text = _url("http", "https")(value)
    return text.removesuffix("/v1").rstrip("/") if text.endswith("/v1") else text


_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control


def _aet(value: str) -> str:
    text = value.strip()
    if not _AET.match(text) or not text.strip():
        raise ValueError("expected a DICOM AE title: 1 to 16 printable characters, no backslash")
    return text


def _aets(value: str) -> tuple[str, ...]:
    return tuple(_aet(item) for item in _list(value))


_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _uids(value: str) -> tuple[str, ...]:
    uids = _list(value)
    for uid in uids:
        if len(uid) > 64 or not _UID_RE.match(uid):
            raise ValueError("expected comma-separated DICOM UIDs (digits and dots)")
    return uids


@dataclass(frozen=True)
class DicomPeer:
    """A DICOM node to send to: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _dicom_peer(value: str) -> DicomPeer | None:
    """``AE@host:port`` (as DCMTK's and Orthanc's users write a node); empty: none."""
    text = value.strip()
    if not text:
        return None
    aet, at, address = text.rpartition("@")
    host, colon, port = address.rpartition(":")
    expected = "expected AE_TITLE@host:port (e.g. PACS@pacs.hospital.local:104)"
    if not at or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(expected)
    try:
        return DicomPeer(_aet(aet), host.strip("[]"), int(port))
    except ValueError:
        raise ValueError(expected) from None


def _uid_root(value: str) -> str:
    """A UID root of ours (digits and dots, ending in a dot), room left for what follows."""
    text = value.strip()
    root = text.rstrip(".")
    if not _UID_RE.match(root) or len(root) > 40:
        raise ValueError("expected a UID root: digits and dots, at most 40 characters "
                         "(e.g. 1.2.826.0.1.3680043.8.498.)")
    return root + "."


def _filters(value: str) -> tuple[str, ...]:
    from pydicom.datadict import tag_for_keyword

    items = _list(value)
    for item in items:
        keyword, sep, _ = item.partition("=")
        if not sep or tag_for_keyword(keyword.strip()) is None:
            raise ValueError("expected comma-separated Keyword=Value pairs with DICOM keywords")
    return items


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _list(value))
    except ValueError:
        raise ValueError("expected comma-separated IP addresses or CIDR networks") from None


def _database_url(value: str) -> str:
    text = value.strip()
    if not text:
        return ""  # filled in from server.data_dir
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://"):]
    scheme = urlsplit(text).scheme
    if scheme in ("postgresql", "postgresql+psycopg"):
        return text.replace("postgresql://", "postgresql+psycopg://", 1)
    if scheme == "sqlite":
        return text
    raise ValueError("expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")


def _setting(default: Any, parse: Callable[[str], Any], doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc, "secret": secret})


# --- sections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    roles: tuple[str, ...] = _setting(ROLES, parse_roles, "roles this process runs")
    data_dir: Path = _setting(Path("data"), _path, "folder for SQLite, images and backups")
    log_level: str = _setting("info", _choice("debug", "info", "warning", "error"), "log level")
    log_format: str = _setting("text", _choice("text", "json"), "log line format")
    shutdown_grace: float = _setting(
        20.0, _float(1, 3600), "seconds to finish work after SIGTERM (below the pod's grace period)"
    )
    min_free_mb: int = _setting(
        100, _int(0), "MiB that must stay free where this process writes; less: not ready")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _setting("", _database_url, "database URL; empty: SQLite in data_dir", secret=True)
    pool_size: int = _setting(5, _int(1, 200), "connections kept per process (PostgreSQL)")
    connect_timeout: float = _setting(10.0, _float(0.5, 600), "seconds to wait for one connect")
    sqlite_busy_timeout: float = _setting(30.0, _float(0.1, 600), "seconds SQLite waits on a lock")


@dataclass(frozen=True)
class ImagesSettings:
    backend: str = _setting("filesystem", _choice("filesystem", "database"), "image store")
    path: Path | None = _setting(None, _optional_path, "image folder; empty: data_dir/images")
    max_side: int = _setting(
        896, _int(64, 16384),
        "longest side of the PNG sent to the model: its input size (MedGemma: 896); a "
        "stored PNG larger than this is scaled down when it is sent")
    png_compression: int = _setting(1, _int(0, 9),
                                    "PNG deflate level: 0-3 ISA-L (fast), 4-9 zlib (smaller)")
    retention_days: int = _setting(0, _int(0), "delete images of exams older than this; 0 keeps")
    window_index: int = _setting(0, _int(0, 100), "which of several DICOM windows to use")


@dataclass(frozen=True)
class DicomSettings:
    ae_title: str = _setting("XRAYVISION", _aet, "our AE title")
    host: str = _setting("0.0.0.0", _str, "SCP listen address")  # noqa: S104 - a DICOM SCP serves the LAN
    port: int = _setting(11112, _int(1, 65535), "SCP port")
    allowed_calling_aets: tuple[str, ...] = _setting((), _aets, "calling AE allow-list; empty: any")
    max_associations: int = _setting(16, _int(1, 1000), "concurrent associations")
    max_pdu: int = _setting(4 * 1024 * 1024, _int(0, 2**32 - 1),
                            "maximum PDU length we receive (larger ones abort the "
                            "association); 0: unlimited (then 64 MiB is enforced)")
    read_timeout: float = _setting(
        30.0, _float(0.1, 3600),
        "seconds a peer may pause in the middle of a PDU before the connection is closed")
    idle_timeout: float = _setting(
        60.0, _float(1, 86400), "seconds an association may stay without any PDU")
    fast_receive: bool = _setting(
        True, _bool, "our receive path (dicom/transport.py); false: pynetdicom's own, "
        "slower and without PDU size limits")
    listen_backlog: int = _setting(128, _int(1, 65535),
                                   "connections the kernel queues before the SCP accepts them")
    require_called_aet: bool = _setting(True, _bool, "reject associations to another AE title")
    extra_sop_classes: tuple[str, ...] = _setting((), _uids, "storage SOP classes beyond CR/DX/SC")
    convert_workers: int = _setting(0, _int(0, 64), "conversion processes; 0: cores - 1")
    convert_defer: float = _setting(
        5.0, _float(0, 3600),
        "seconds an instance's conversion may wait while more keep arriving; 0: none")
    keep_dicom: bool = _setting(False, _bool, "keep the received DICOM after conversion")
    max_pixels: int = _setting(50_000_000, _int(1), "rows x columns x frames accepted")
    tls_cert: Path | None = _setting(None, _optional_path, "server certificate (PEM): DICOM TLS")
    tls_key: Path | None = _setting(None, _optional_path, "server private key (PEM)")
    tls_ca: Path | None = _setting(None, _optional_path, "CA (PEM) that client certificates need")


@dataclass(frozen=True)
class PacsSettings:
    host: str = _setting("", _str, "PACS host for query/retrieve; empty: off")
    port: int = _setting(104, _int(1, 65535), "PACS port")
    ae_title: str = _setting("PACS", _aet, "PACS AE title")
    retrieve: str = _setting("move", _choice("move", "get"), "C-MOVE or C-GET")
    query_interval: float = _setting(300.0, _float(1), "seconds between C-FIND queries")
    lookback_days: int = _setting(1, _int(0, 365), "days queried on the first run")
    max_parallel: int = _setting(2, _int(1, 16), "studies retrieved at once")
    query_filters: tuple[str, ...] = _setting((), _filters, "extra C-FIND keys: Keyword=Value")
    modalities: tuple[str, ...] = _setting(("CR", "DX"), _list, "modalities queried")


@dataclass(frozen=True)
class AISettings:
    primary_url: str = _setting("http://127.0.0.1:8000", _model_url,
                                "primary model server (base URL; a trailing /v1 is dropped)")
    secondary_url: str = _setting("", _model_url, "secondary model server; empty: none")
    model: str = _setting("google/medgemma-4b-it", _str, "served model name")
    api_key: str = _setting("", _str, "API key for the model endpoints", secret=True)
    timeout: float = _setting(300.0, _float(1, 3600), "seconds for one model request")
    health_interval: float = _setting(60.0, _float(1, 3600), "seconds between health checks")
    max_attempts: int = _setting(3, _int(1, 100), "attempts per exam before status error")
    secondary_model: str = _setting("", _str, "model name on the secondary; empty: model")
    prompts_dir: Path | None = _setting(None, _optional_path, "prompt folder; empty: ./prompts")
    max_tokens: int = _setting(1024, _int(16, 32768), "longest report, in tokens")
    read_per: str = _setting(
        "study", _choice("study", "image"),
        "what one model read covers: a study (its images in one request) or each image")
    study_quiet: float = _setting(
        10.0, _float(0, 3600), "seconds without a new image before a study is read "
                               "(urgent, asap and stat studies: at once)")
    max_images: int = _setting(
        4, _int(1, 32), "images of a study in one request (vLLM --limit-mm-per-prompt: the "
                        "ModelEndpoint's vllm.maxImagesPerPrompt must allow as many)")
    shadow_url: str = _setting(
        "", _model_url, "shadow model server: a copy of reads goes there, its answers are "
                        "stored apart and never shown as the AI read; empty: none")
    shadow_model: str = _setting("", _str, "model name on the shadow; empty: model")
    shadow_rate: float = _setting(
        30.0, _float(0.1, 100000), "most reads copied to the shadow per minute (more are "
                                   "skipped, never queued behind the live reads)")


@dataclass(frozen=True)
class ProbesSettings:
    dir: Path | None = _setting(None, _optional_path,
                                "known-answer probe set folder (probes.toml); empty: ./probes")
    interval: float = _setting(900.0, _float(0, 86400),
                               "seconds between probe rounds of a passing endpoint; 0: off")
    retry_interval: float = _setting(60.0, _float(1, 86400),
                                     "seconds between probe rounds of a failing endpoint")
    latency_budget: float = _setting(
        120.0, _float(1, 3600), "seconds one probe case (read and CHK) may take")


@dataclass(frozen=True)
class RelaySettings:
    concurrency: int = _setting(4, _int(1, 256), "model calls in flight per process")
    sweep_interval: float = _setting(30.0, _float(0.1, 3600), "seconds between queue sweeps")


# Imaging reports: HL7 v2 diagnostic service section RAD, and LOINC's "Radiology" part (US
# Core's imaging DiagnosticReport category).
IMAGING_CATEGORIES = ("http://terminology.hl7.org/CodeSystem/v2-0074|RAD",
                      "http://loinc.org|LP29684-5")


@dataclass(frozen=True)
class FhirSettings:
    url: str = _setting("", _url("http", "https"), "FHIR R4 base URL; empty: off")
    username: str = _setting("", _str, "FHIR Basic user")
    password: str = _setting("", _str, "FHIR Basic password", secret=True)
    ca_bundle: Path | None = _setting(None, _optional_path, "CA bundle for FHIR TLS")
    poll_interval: float = _setting(300.0, _float(5), "seconds between FHIR polls")
    identifier_system: str = _setting(
        "urn:ro:cnp", _str,
        "Patient.identifier system of the patient id (CNP); empty: try every identifier")
    report_categories: tuple = _setting(
        IMAGING_CATEGORIES, _list,
        "DiagnosticReport categories (system|code, comma-separated) searched for: imaging "
        "reports only; empty: any category")
    report_codes: tuple = _setting(
        (), _list, "DiagnosticReport codes (system|code, comma-separated) searched for "
        "besides the categories; empty: any code")
    lookback_days: int = _setting(14, _int(1, 3650), "poll done exams received this many days back")
    match_window_days: int = _setting(
        7, _int(0, 365), "a report issued this many days after an exam may match it by date")
    concurrency: int = _setting(8, _int(1, 256), "patients fetched at once during a poll")
    timeout: float = _setting(30.0, _float(1, 600), "seconds per FHIR request")
    max_attempts: int = _setting(4, _int(1, 20), "tries per FHIR request on 429/5xx/connect errors")
    enrich: bool = _setting(True, _bool, "fill in patient data from FHIR before the model call")
    cache_seconds: float = _setting(3600.0, _float(0), "how long enrichment results are kept")


@dataclass(frozen=True)
class WebSettings:
    host: str = _setting("127.0.0.1", _str, "web listen address")
    port: int = _setting(8080, _int(1, 65535), "web port")
    trusted_proxies: tuple = _setting((), _networks, "CIDRs whose X-Forwarded-For is trusted")
    rate_limit: int = _setting(600, _int(0), "requests per minute per IP; 0: off")
    metrics_auth: bool = _setting(False, _bool, "require auth on /metrics")
    count_cache: float = _setting(5.0, _float(0, 3600),
                                  "seconds an exam-list total is reused; 0: always counted")
    stats_cache: float = _setting(15.0, _float(0, 3600),
                                  "seconds a statistics answer is reused; 0: always computed")
    login_max_failures: int = _setting(
        10, _int(1, 1000), "failed logins for one user name (twice as many for one address) "
                           "within 15 minutes before it is locked out")
    login_lockout: float = _setting(300.0, _float(1, 86400),
                                    "seconds a locked-out user name or address waits")
    session_idle: float = _setting(1800.0, _float(60, 7 * 86400),
                                   "seconds a dashboard sign-in lasts unused (then sign in "
                                   "again)")
    viewer_url: str = _setting("", _viewer_url,
                               "the hospital's diagnostic viewer for a study: a URL with "
                               "{study_uid}, {series_uid}, {uid} or {accession}; empty: none")


@dataclass(frozen=True)
class ProcessingSettings:
    severity_threshold: int = _setting(5, _int(0, 10), "severity at or above which is positive")
    lease_seconds: float = _setting(600.0, _float(1, 86400), "claim lease of a queued exam")
    page_size: int = _setting(50, _int(1, 1000), "dashboard page size")
    retry_delay: float = _setting(30.0, _float(0, 86400), "seconds before a failed exam is retried")
    untagged: str = _setting("read", _choice("read", "ignore"),
                             "an image without body part, protocol or descriptions: read "
                             "(region unknown) or ignore")


@dataclass(frozen=True)
class NotifySettings:
    ntfy_url: str = _setting("", _url("http", "https"), "ntfy server; empty: off")
    ntfy_topic: str = _setting("xrayvision", _str, "ntfy topic")
    include_patient_name: bool = _setting(False, _bool, "put the patient name in notifications")
    dashboard_url: str = _setting("http://127.0.0.1:8080", _url("http", "https"),
                                  "dashboard address used in notification links")


@dataclass(frozen=True)
class MaintenanceSettings:
    interval: float = _setting(86400.0, _float(1), "seconds between maintenance runs")
    backup_keep: int = _setting(7, _int(0, 1000), "SQLite backups kept; 0: no backups")
    error_retention_days: int = _setting(
        30, _int(0), "purge error exams older than this (not those with an AI read: a read "
        "and its reviews are kept); 0 keeps")


@dataclass(frozen=True)
class User:
    role: str
    password_hash: str


DEFAULT_REGIONS: dict[str, tuple[str, ...]] = {
    "chest": ("chest", "thorax", "thoracic", "torace", "toracic", "pulmonar", "lung"),
    "abdomen": ("abdomen", "abdominal", "abdomin"),
    "skull": ("skull", "cranium", "craniu", "sinus", "sinusuri", "mandible"),
    "spine": ("spine", "spinal", "coloana", "vertebra", "lumbar", "cervical", "thoracolumbar"),
    "pelvis": ("pelvis", "bazin", "hip", "sacrum", "coxo"),
    "shoulder": ("shoulder", "umar", "clavicle", "clavicula", "scapula"),
    "arm": ("humerus", "elbow", "cot", "forearm", "antebrat", "radius", "ulna"),
    "hand": ("hand", "mana", "wrist", "pumn", "finger", "deget"),
    "leg": ("femur", "knee", "genunchi", "tibia", "fibula", "gamba"),
    "foot": ("foot", "picior", "ankle", "glezna", "calcaneus", "toe"),
}

@dataclass(frozen=True)
class ResultsSettings:
    """Where AI reads go back to the hospital (docs/results.md): a DICOM SR to the PACS,
    FHIR Observation + DiagnosticReport to the HIS, both from the results outbox."""

    dicom_destination: DicomPeer | None = _setting(
        None, _dicom_peer, "PACS for AI reads as DICOM SR: AE@host:port; empty: off")
    dicom_tls_ca: Path | None = _setting(None, _optional_path,
                                         "CA (PEM) of the PACS: C-STORE over TLS")
    dicom_tls_cert: Path | None = _setting(None, _optional_path,
                                           "our client certificate (PEM) for that TLS")
    dicom_tls_key: Path | None = _setting(None, _optional_path, "its private key (PEM)")
    fhir_url: str = _setting("", _url("http", "https"),
                             "FHIR R4 base URL for AI reads (Observation, DiagnosticReport)")
    fhir_username: str = _setting("", _str, "FHIR Basic user for the results")
    fhir_password: str = _setting("", _str, "FHIR Basic password for the results", secret=True)
    fhir_ca_bundle: Path | None = _setting(None, _optional_path, "CA bundle for that FHIR TLS")
    uid_root: str = _setting("1.2.826.0.1.3680043.8.498.", _uid_root,
                             "UID root of the SRs we make (use your organisation's)")
    secondary_capture: bool = _setting(
        False, _bool, "also send the first image with the AI read burnt in (Secondary Capture)")
    max_attempts: int = _setting(10, _int(1, 1000), "sends of one result before dead-letter")
    retry_delay: float = _setting(
        30.0, _float(0.1, 86400), "seconds before a failed send is retried (doubled each time, "
        "at most an hour)")
    timeout: float = _setting(30.0, _float(1, 600), "seconds for one send")
    batch: int = _setting(32, _int(1, 1000),
                          "results claimed (and C-STOREd on one association) at once")
    workers: int = _setting(2, _int(0, 64),
                            "processes that build and C-STORE the SRs; 0: a thread of the relay")

    @property
    def enabled(self) -> tuple[str, ...]:
        """The destinations set (``dicom``, ``fhir``)."""
        return tuple(name for name, on in (("dicom", self.dicom_destination is not None),
                                           ("fhir", bool(self.fhir_url))) if on)


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "images": ImagesSettings,
    "dicom": DicomSettings,
    "pacs": PacsSettings,
    "ai": AISettings,
    "relay": RelaySettings,
    "fhir": FhirSettings,
    "web": WebSettings,
    "processing": ProcessingSettings,
    "notify": NotifySettings,
    "maintenance": MaintenanceSettings,
    "results": ResultsSettings,
    "probes": ProbesSettings,
}
OPEN_SECTIONS = ("users", "regions", "priority")


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    images: ImagesSettings = field(default_factory=ImagesSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    ai: AISettings = field(default_factory=AISettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    fhir: FhirSettings = field(default_factory=FhirSettings)
    web: WebSettings = field(default_factory=WebSettings)
    processing: ProcessingSettings = field(default_factory=ProcessingSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    results: ResultsSettings = field(default_factory=ResultsSettings)
    probes: ProbesSettings = field(default_factory=ProbesSettings)
    users: Mapping[str, User] = field(default_factory=dict)
    regions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_REGIONS))
    priority: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def database_url(self) -> str:
        """The effective database URL (SQLite under data_dir when none is set)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.server.data_dir / 'xrayvision.db').resolve()}"

    @property
    def images_path(self) -> Path:
        return self.images.path or self.server.data_dir / "images"

    def written_disks(self, staging: Path) -> dict[str, Path]:
        """The folders this process's roles write to (what for: folder), ``staging``
        being where received data sets arrive: the readiness check watches their space."""
        disks = {}
        url = self.database_url
        if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            disks["database"] = Path(url.removeprefix("sqlite:///")).parent
        if "ingest" in self.server.roles:
            disks["received DICOM"] = staging
            if self.images.backend == "filesystem":
                disks["image store"] = self.images_path
        return disks

    @property
    def backup_dir(self) -> Path:
        return self.server.data_dir / "backups"

    def priority_for(self, calling_aet: str | None) -> int:
        """The queue priority for exams sent by ``calling_aet`` (routine when unmapped)."""
        if not calling_aet:
            return PRIORITIES["routine"]
        return self.priority.get(calling_aet.strip(), PRIORITIES["routine"])


# --- loading -------------------------------------------------------------------------------


def _read_files(config_dir: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """Returns {section: {key: (raw value, where it came from)}} from the config files."""
    raw: dict[str, dict[str, tuple[str, str]]] = {}
    for name in CONFIG_FILES:
        path = config_dir / name
        if not path.is_file():
            continue
        # (a value ends at " ;": the example's notes stay notes when a line is uncommented)
        parser = configparser.RawConfigParser(interpolation=None, strict=True,
                                              inline_comment_prefixes=(";",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep case: user names and AE titles are case-sensitive
        try:
            with path.open(encoding="utf-8") as fh:
                parser.read_file(fh, source=str(path))
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        for section in parser.sections():
            for key, value in parser.items(section):
                raw.setdefault(section.lower(), {})[key] = (value, str(path))
    return raw


def _read_env(env: Mapping[str, str], warnings: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
    raw: dict[str, dict[str, tuple[str, str]]] = {}
    known = list(SECTIONS) + list(OPEN_SECTIONS)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        section = next((s for s in known if rest.lower().startswith(s + "_")), None)
        if section is None:
            warnings.append(f"unknown environment variable {name} (ignored)")
            continue
        key = rest[len(section) + 1:]
        # Env names are upper case by convention; AE titles (priority) are upper case too.
        key = key if section == "priority" else key.lower()
        raw.setdefault(section, {})[key] = (value, f"environment {name}")
    return raw


def _parse_section(cls: type, entries: dict[str, tuple[str, str]], section: str,
                   warnings: list[str]) -> Any:
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, (value, source) in entries.items():
        fld = by_name.get(key.lower())
        if fld is None:
            warnings.append(f"unknown setting [{section}] {key} in {source} (ignored)")
            continue
        try:
            values[fld.name] = fld.metadata["parse"](value)
        except ValueError as exc:
            shown = value
            if fld.metadata["secret"]:  # a URL keeps its shape, anything else is hidden
                shown = mask_url(value) if section == "database" else MASK
            raise ConfigError(
                f"invalid setting [{section}] {fld.name} = {shown!r} (from {source}): {exc}"
            ) from None
    return cls(**values)


def _parse_users(entries: dict[str, tuple[str, str]]) -> dict[str, User]:
    users: dict[str, User] = {}
    for name, (value, source) in entries.items():
        role, sep, hashed = value.strip().partition(":")
        where = f"[users] {name} (from {source})"
        if not sep or role.strip().lower() not in USER_ROLES:
            raise ConfigError(
                f"invalid setting {where}: expected <role>:<scrypt hash> with role one of "
                f"{', '.join(USER_ROLES)}"
            )
        try:
            parse_hash(hashed.strip())
        except BadHash as exc:
            raise ConfigError(
                f"invalid setting {where}: {exc}; plaintext passwords are not accepted, "
                "make a hash with `xrayvision hash-password`"
            ) from None
        users[name] = User(role=role.strip().lower(), password_hash=hashed.strip())
    return users


def _parse_regions(entries: dict[str, tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    regions = dict(DEFAULT_REGIONS)
    for name, (value, _source) in entries.items():
        keywords = tuple(k.lower() for k in _list(value))
        if keywords:
            regions[name.lower()] = keywords
        else:  # an empty value switches a built-in region off
            regions.pop(name.lower(), None)
    return regions


def _parse_priority(entries: dict[str, tuple[str, str]]) -> dict[str, int]:
    result: dict[str, int] = {}
    for aet, (value, source) in entries.items():
        text = value.strip().lower()
        try:
            level = PRIORITIES[text] if text in PRIORITIES else _int(-100, 100)(text)
            result[_aet(aet)] = level
        except ValueError:
            raise ConfigError(
                f"invalid setting [priority] {aet} = {value!r} (from {source}): expected one of "
                f"{', '.join(PRIORITIES)} or an integer from -100 to 100"
            ) from None
    return result


def load_settings(config_dir: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Reads, merges and validates settings; raises ConfigError on the first bad value."""
    config_dir = Path.cwd() if config_dir is None else config_dir
    env = os.environ if env is None else env
    warnings: list[str] = []
    merged = _read_files(config_dir)
    for section, entries in _read_env(env, warnings).items():
        merged.setdefault(section, {}).update(entries)

    kwargs: dict[str, Any] = {}
    for section, entries in merged.items():
        if section in SECTIONS:
            kwargs[section] = _parse_section(SECTIONS[section], entries, section, warnings)
        elif section == "users":
            kwargs["users"] = _parse_users(entries)
        elif section == "regions":
            kwargs["regions"] = _parse_regions(entries)
        elif section == "priority":
            kwargs["priority"] = _parse_priority(entries)
        else:
            warnings.append(f"unknown section [{section}] (ignored)")
    return Settings(**kwargs, warnings=tuple(warnings))


def mask_url(url: str) -> str:
    """Hides the password of a URL (``postgresql://u:***@h/db``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:{MASK}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def effective_settings(settings: Settings) -> dict[str, dict[str, str]]:
    """The settings as {section: {key: text}} with secrets masked, for `check-config`."""
    out: dict[str, dict[str, str]] = {}
    for section in SECTIONS:
        values = getattr(settings, section)
        rows = {}
        for fld in dataclasses.fields(values):
            value = getattr(values, fld.name)
            if fld.metadata["secret"] and value:
                text = mask_url(value) if section == "database" else MASK
            else:
                text = _show(value)
            rows[fld.name] = text
        out[section] = rows
    out["database"]["effective_url"] = mask_url(settings.database_url)
    out["users"] = {name: f"{u.role}:{MASK}" for name, u in settings.users.items()}
    out["regions"] = {name: ", ".join(kw) for name, kw in settings.regions.items()}
    out["priority"] = {aet: str(level) for aet, level in settings.priority.items()}
    return out
