"""FHIR R4 REST client (aiohttp; one session per process).

Basic credentials and TLS from :class:`FhirServer` (verification on; a custom CA bundle
may be given). Each request is retried on 429 (honouring ``Retry-After``), 5xx, timeouts
and connection errors with exponential back-off and jitter, up to ``max_attempts`` tries.
Searches follow ``Bundle.link[next]`` while it stays on the server's own origin (the
credentials never go elsewhere), refusing a link seen before and stopping at
``max_pages``.

Errors::

    FhirError
      +-- FhirHTTPError       a definite answer that retrying will not change (400, 401,
      |                       403, 404, 410, ...): ``status`` and the OperationOutcome text
      +-- FhirUnavailable     every try failed (429, 5xx, timeout, connect error); ``status``
      |                       is the last HTTP status, or None when nothing answered
      +-- FhirBadResponse     an answer that is not the FHIR JSON asked for, or paging that
                              loops, leaves the server or never ends
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from xrayvision import metrics
from xrayvision.config import FhirSettings

log = logging.getLogger(__name__)

# Stored: final, amended, corrected; withdraw what was stored: entered-in-error, cancelled.
REPORT_STATUSES = ("final", "amended", "corrected", "entered-in-error", "cancelled")
WITHDRAWN_STATUSES = ("entered-in-error", "cancelled")


class FhirError(Exception):
    """A FHIR request failed; see the subclasses."""

    def __init__(self, message: str, status: int | None = None, outcome: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class FhirHTTPError(FhirError):
    """The server answered with an error that retrying will not change."""


class FhirUnavailable(FhirError):
    """No usable answer after every try (throttled, server errors, timeouts, no connection)."""


class FhirBadResponse(FhirError):
    """The answer was not the FHIR JSON expected, or paging misbehaved."""


@dataclass(frozen=True)
class FhirServer:
    """Where and how to reach the FHIR server."""

    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    ca_bundle: Path | None = None
    timeout: float = 30.0
    max_attempts: int = 4

    @classmethod
    def from_settings(cls, fhir: FhirSettings) -> FhirServer:
        return cls(url=fhir.url.rstrip("/"), username=fhir.username, password=fhir.password,
                   ca_bundle=fhir.ca_bundle, timeout=fhir.timeout, max_attempts=fhir.max_attempts)


@dataclass(frozen=True)
class SearchResult:
    """Resources of a search, across all pages: ``matches`` and ``included`` (by mode)."""

    matches: list[dict]
    included: list[dict]
    pages: int


def operation_outcome_text(body: Any) -> str:
    """The diagnostics / details text of an OperationOutcome ("" for anything else)."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    texts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        if text:
            texts.append(str(text))
    return "; ".join(texts)[:1000]


def redact(text: str) -> str:
    """``text`` without long numbers (a CNP, a record number an OperationOutcome may
    echo), for logs above DEBUG."""
    return re.sub(r"\d{6,}", "[number]", text or "")


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _resource_label(url: str, base_path: str) -> str:
    """The resource type a request is about (for metrics): first path segment after base."""
    path = urlsplit(url).path
    if path.startswith(base_path):
        path = path[len(base_path):]
    first = path.strip("/").split("/", 1)[0]
    return first if first[:1].isupper() and first.isalpha() else "other"


class FhirClient:
    def __init__(self, server: FhirServer, session: aiohttp.ClientSession, *,
                 max_pages: int = 200, page_size: int = 100, backoff: float = 0.5,
                 max_backoff: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.server = server
        self.session = session
        self.max_pages = max_pages
        self.page_size = page_size
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._headers = {"Accept": "application/fhir+json"}
        if server.username:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(server.username,
                                                                       server.password)
        self._ssl: ssl.SSLContext | bool = True
        if server.ca_bundle is not None:
            self._ssl = ssl.create_default_context(cafile=str(server.ca_bundle))
        parts = urlsplit(server.url)
        self._origin = (parts.scheme, parts.netloc)
        self._base_path = parts.path.rstrip("/")
        self.requests = 0  # HTTP requests sent (tries included), for benchmarks and tests

    # --- transport -----------------------------------------------------------------------

    async def get(self, url: str, params: list[tuple[str, str]] | dict[str, str] | None = None
                  ) -> dict:
        """GETs ``url`` (absolute, or relative to the base URL) and returns the JSON
        resource; raises the errors drawn in the module docstring."""
        if not url.startswith(("http://", "https://")):
            url = f"{self.server.url}/{url.lstrip('/')}"
        resource = _resource_label(url, self._base_path)
        path = urlsplit(url).path  # (the query may name a patient: never logged)
        last: FhirError | None = None
        for attempt in range(1, self.server.max_attempts + 1):
            try:
                return await self._get_once(url, params, resource)
            except (FhirHTTPError, FhirBadResponse) as exc:
                log.warning("FHIR request failed", extra={
                    "path": path, "status": exc.status, "outcome": redact(exc.outcome),
                    "error": redact(str(exc))})
                raise
            except _Retry as retry:
                last = retry.error
                if attempt == self.server.max_attempts:
                    break
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                delay = delay * (0.5 + random.random() / 2)
                if retry.after is not None:
                    delay = min(self.max_backoff, max(delay, retry.after))
                log.warning("FHIR request failed; retrying",
                            extra={"path": path, "status": last.status, "attempt": attempt,
                                   "retry_in": round(delay, 2), "error": redact(str(last))})
                await self._sleep(delay)
        assert last is not None
        metrics.FHIR_REQUESTS.labels(resource, "unavailable").inc()
        log.warning("FHIR server unavailable", extra={
            "path": path, "status": last.status, "outcome": redact(last.outcome),
            "tries": self.server.max_attempts, "error": redact(str(last))})
        raise FhirUnavailable(
            f"FHIR server unavailable after {self.server.max_attempts} tries: {last}",
            status=last.status, outcome=last.outcome)

    async def _get_once(self, url: str, params: Any, resource: str) -> dict:
        return await self._send_once("GET", url, params, resource)

    async def _send_once(self, method: str, url: str, params: Any, resource: str,
                         payload: dict | None = None) -> dict:
        self.requests += 1
        timeout = aiohttp.ClientTimeout(total=self.server.timeout)
        headers = self._headers
        if payload is not None:
            headers = {**headers, "Content-Type": "application/fhir+json",
                       "Prefer": "return=representation"}
        try:
            async with self.session.request(
                method, url, params=params, ssl=self._ssl, timeout=timeout, headers=headers,
                allow_redirects=False,
                data=None if payload is None else json.dumps(payload).encode(),
            ) as response:
                raw = await response.read()
                status = response.status
                after = retry_after(response.headers.get("Retry-After"))
                location = response.headers.get("Location", "")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            kind = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
            metrics.FHIR_REQUESTS.labels(
                resource, "timeout" if isinstance(exc, TimeoutError) else "connect_error").inc()
            raise _Retry(FhirUnavailable(f"{kind}: {type(exc).__name__} {exc}".strip())) from exc
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        outcome = operation_outcome_text(body)
        if status == 429 or status >= 500:
            metrics.FHIR_REQUESTS.labels(
                resource, "throttled" if status == 429 else "server_error").inc()
            raise _Retry(FhirUnavailable(_describe(status, outcome), status, outcome), after)
        if status >= 300:
            metrics.FHIR_REQUESTS.labels(
                resource, "not_found" if status in (404, 410) else "client_error").inc()
            raise FhirHTTPError(_describe(status, outcome), status, outcome)
        if payload is not None and not isinstance(body, dict) and location:
            # (return=minimal: the id from Location, .../Type/id/_history/n)
            parts = urlsplit(location).path.rstrip("/").split("/")
            if "_history" in parts:
                parts = parts[:parts.index("_history")]
            body = {**payload, "id": parts[-1]}
        if not isinstance(body, dict) or "resourceType" not in body:
            metrics.FHIR_REQUESTS.labels(resource, "bad_response").inc()
            raise FhirBadResponse(f"HTTP {status} from {resource} is not a FHIR JSON resource",
                                  status)
        metrics.FHIR_REQUESTS.labels(resource, "ok").inc()
        return body

    async def conditional_update(self, resource_type: str, identifier: str,
                                 resource: dict) -> dict:
        """``PUT <resource_type>?identifier=<identifier>``: updates the one resource with
        that identifier or creates it (FHIR conditional update), so that sending the same
        resource again never makes a second one. One try: the caller (the results
        outbox) retries. Returns the stored resource (with its ``id``); raises
        FhirHTTPError (a definite refusal), FhirUnavailable, FhirBadResponse."""
        url = f"{self.server.url}/{resource_type}"
        try:
            return await self._send_once("PUT", url, {"identifier": identifier},
                                         resource_type, resource)
        except _Retry as retry:
            error = retry.error
        except (FhirHTTPError, FhirBadResponse) as exc:
            error = exc
        log.warning("FHIR write failed", extra={
            "path": urlsplit(url).path, "status": error.status,
            "outcome": redact(error.outcome), "error": redact(str(error))})
        raise error

    # --- searches ------------------------------------------------------------------------

    async def search(self, resource_type: str, params: dict[str, str],
                     include: tuple[str, ...] = ()) -> SearchResult:
        """All entries of a search, following ``next`` links (see the module docstring);
        ``include`` adds ``_include`` parameters."""
        query = [("_count", str(self.page_size)), *params.items(),
                 *(("_include", spec) for spec in include)]
        page = await self.get(resource_type, query)
        matches: list[dict] = []
        included: list[dict] = []
        seen: set[str] = set()
        pages = 0
        while True:
            pages += 1
            if page.get("resourceType") != "Bundle":
                raise FhirBadResponse(
                    f"search of {resource_type} returned {page.get('resourceType')}, "
                    "not a Bundle")
            entries = page.get("entry") or []
            if not isinstance(entries, list):
                raise FhirBadResponse(f"search of {resource_type}: Bundle.entry is not a list")
            for entry in entries:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict) or "resourceType" not in resource:
                    raise FhirBadResponse(f"search of {resource_type}: an entry has no resource")
                mode = (entry.get("search") or {}).get("mode", "match")
                if mode == "include" or resource["resourceType"] != resource_type:
                    if resource["resourceType"] != "OperationOutcome":
                        included.append(resource)
                else:
                    matches.append(resource)
            following = next_link(page)
            if following is None:
                return SearchResult(matches, included, pages)
            if following in seen:
                raise FhirBadResponse(f"search of {resource_type}: the next link loops")
            if not self._same_origin(following):
                raise FhirBadResponse(
                    f"search of {resource_type}: the next link leaves the server")
            if pages >= self.max_pages:
                raise FhirBadResponse(
                    f"search of {resource_type}: more than {self.max_pages} pages")
            seen.add(following)
            page = await self.get(following)

    def _same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == self._origin

    async def find_patients(self, *, identifier: str = "", system: str = "", name: str = "",
                            birth_date: str = "") -> list[dict]:
        """Patients by identifier (``system|value`` when a system is given), else by name
        and birth date (YYYY-MM-DD). Returns [] when neither is given."""
        if identifier:
            params = {"identifier": f"{system}|{identifier}" if system else identifier}
        elif name and birth_date:
            params = {"name": name, "birthdate": birth_date}
        else:
            return []
        return (await self.search("Patient", params)).matches

    async def service_requests(self, patient_id: str) -> list[dict]:
        """ServiceRequests whose subject is ``Patient/<patient_id>``."""
        return (await self.search("ServiceRequest",
                                  {"subject": f"Patient/{patient_id}"})).matches

    async def diagnostic_reports(self, *, patient_id: str = "", identifier: str = "",
                                 system: str = "", based_on: str = "",
                                 since: str = "", categories: tuple[str, ...] = (),
                                 codes: tuple[str, ...] = ()) -> SearchResult:
        """DiagnosticReports in :data:`REPORT_STATUSES` (the ones to store and the ones
        that withdraw a stored one) with the ServiceRequests they are based on, their
        subjects and their interpreting Practitioners (``_include``). One patient, by
        FHIR id or by a chained identifier search (one request per patient, no Patient
        lookup first); optionally only those
        ``based-on`` a ServiceRequest id, or updated after ``since`` (FHIR instant).
        ``categories`` and ``codes`` (tokens, each list any of) filter on the server: a
        HIS's laboratory reports never travel."""
        params = {"status": ",".join(REPORT_STATUSES)}
        if categories:
            params["category"] = ",".join(categories)
        if codes:
            params["code"] = ",".join(codes)
        if patient_id:
            params["subject"] = f"Patient/{patient_id}"
        elif identifier:
            params["patient.identifier"] = f"{system}|{identifier}" if system else identifier
        if based_on:
            params["based-on"] = (based_on if "/" in based_on
                                  else f"ServiceRequest/{based_on}")
        if since:
            params["_lastUpdated"] = f"gt{since}"
        return await self.search("DiagnosticReport", params,
                                 include=("DiagnosticReport:based-on",
                                          "DiagnosticReport:subject",
                                          "DiagnosticReport:results-interpreter"))


def next_link(bundle: dict) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _describe(status: int, outcome: str) -> str:
    return f"HTTP {status}" + (f": {outcome}" if outcome else "")


class _Retry(Exception):
    def __init__(self, error: FhirError, after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.after = after
