"""Known-answer probes: model endpoints judged by their answers, not only their liveness.

A probe set (a folder: ``probes.toml`` and the images it names; ``[probes] dir``, a
ConfigMap in Kubernetes; ``probes/`` in the source tree is the shipped default) lists
cases, each a read with an expected answer: the severity band, whether the finding is
positive, the report sections that must be there. The :class:`Prober` (the relay role,
one per cluster under a singleton lock) sends every case to every endpoint, as a real
read (the same messages, the same image scaling) followed by CHK on the same endpoint,
at start, every ``[probes] interval`` seconds, at once when an endpoint comes back up,
and every ``[probes] retry_interval`` while one fails. An endpoint passes a round when
every case's answer parses and falls in its band within ``[probes] latency_budget``;
else it is *degraded*: :meth:`ModelClient.set_probe` takes it out of routing as if it
were down. A round that could not reach the endpoint judges nothing (liveness is the
health check's).

Verdicts are kept in the ``state`` table (``model-probe:<endpoint>``) and published
(``model.probe``), so that every process's model client routes alike
(:func:`follow_probes`), the dashboard shows them and the operator reads them
(``GET /model-probes`` on the health port).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xrayvision import metrics
from xrayvision.ai.client import (
    Endpoint,
    ModelBadOutput,
    ModelClient,
    ModelRejected,
    ModelUnavailable,
    ProbeState,
)
from xrayvision.ai.parse import Check, Report, parse_check, parse_report
from xrayvision.ai.pipeline import ExamContext, study_messages
from xrayvision.ai.prompts import Prompts
from xrayvision.ai.text import check_messages
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.events import GAP, MODEL_PROBE, RECONNECTED, Bus

log = logging.getLogger(__name__)

MANIFEST = "probes.toml"
STATE_PREFIX = "model-probe:"
SECTIONS = ("findings", "impression")


class ProbeSetError(Exception):
    """The probe set cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ProbeCase:
    name: str
    images: tuple[bytes, ...]
    context: ExamContext
    views: tuple[str, ...]
    severity: tuple[int, int]  # the band the CHK severity must fall in, both included
    positive: int | None = None  # 0 or 1 when the answer must say so
    sections: tuple[str, ...] = SECTIONS  # report sections that must not be empty

    def messages(self, prompts: Prompts, scale: Callable[[bytes], bytes]) -> list[dict]:
        """The read's messages, built as the pipeline builds a study's."""
        return study_messages(prompts, self.context, [scale(i) for i in self.images],
                              views=list(self.views), total=len(self.images))


@dataclass(frozen=True)
class ProbeSet:
    cases: tuple[ProbeCase, ...]
    folder: Path

    @property
    def version(self) -> str:
        """12 hex digits naming the set's contents (in the verdicts)."""
        digest = hashlib.sha256()
        for case in self.cases:
            digest.update(repr((case.name, case.severity, case.positive, case.sections,
                                case.context, case.views)).encode())
            for image in case.images:
                digest.update(hashlib.sha256(image).digest())
        return digest.hexdigest()[:12]


def default_dir() -> Path:
    """``./probes`` when it exists (a container's /app), else the source tree's."""
    here = Path.cwd() / "probes"
    return here if here.is_dir() else Path(__file__).resolve().parents[3] / "probes"


def _band(name: str, value: Any) -> tuple[int, int]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not 0 <= value[0] <= value[1] <= 10):
        raise ProbeSetError(f"case {name!r}: severity must be [low, high] within 0..10, "
                            f"got {value!r}")
    return value[0], value[1]


def load_probe_set(folder: Path | None) -> ProbeSet:
    """Reads ``probes.toml`` and its images; raises ProbeSetError naming what is wrong."""
    folder = folder or default_dir()
    path = folder / MANIFEST
    try:
        manifest = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeSetError(f"probe set {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProbeSetError(f"probe set {path} is not valid TOML: {exc}") from None
    entries = manifest.get("case")
    if not isinstance(entries, list) or not entries:
        raise ProbeSetError(f"probe set {path} has no [[case]]")
    cases = []
    for i, entry in enumerate(entries, 1):
        name = str(entry.get("name") or f"case {i}")
        files = entry.get("images")
        if not isinstance(files, list) or not files:
            raise ProbeSetError(f"{path}: case {name!r} names no images")
        images = []
        for file in files:
            try:
                data = (folder / str(file)).read_bytes()
            except OSError as exc:
                raise ProbeSetError(f"{path}: case {name!r}: image {file} cannot be read: "
                                    f"{exc}") from None
            if not data.startswith(b"\x89PNG"):
                raise ProbeSetError(f"{path}: case {name!r}: image {file} is not a PNG")
            images.append(data)
        positive = entry.get("positive")
        if positive not in (None, 0, 1) or isinstance(positive, bool):
            raise ProbeSetError(f"{path}: case {name!r}: positive must be 0 or 1")
        sections = tuple(str(s).lower() for s in entry.get("sections", SECTIONS))
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise ProbeSetError(f"{path}: case {name!r}: unknown sections "
                                f"{', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
        views = entry.get("views") or [entry.get("projection", "")] * len(images)
        age = entry.get("age")
        cases.append(ProbeCase(
            name=name, images=tuple(images),
            context=ExamContext(region=str(entry.get("region", "")),
                                projection=",".join(dict.fromkeys(v for v in views if v)),
                                sex=str(entry.get("sex", "")),
                                age=age if isinstance(age, int) else None),
            views=tuple(str(v) for v in views), severity=_band(name, entry.get("severity")),
            positive=positive, sections=sections))
    return ProbeSet(tuple(cases), folder)


# --- judging (pure) ---------------------------------------------------------------------


def judge(case: ProbeCase, report: Report, check: Check, seconds: float,
          budget: float) -> list[str]:
    """Why an answer to ``case`` is wrong ([] when it is right)."""
    problems = [f"no {section.upper()} section" for section in case.sections
                if not getattr(report, section).strip()]
    low, high = case.severity
    if check.severity < 0:
        problems.append("CHK answer without a usable severity")
    elif not low <= check.severity <= high:
        problems.append(f"severity {check.severity}, expected {low}-{high}")
    if case.positive is not None and check.positive != case.positive:
        problems.append(f"positive {check.positive}, expected {case.positive}")
    if seconds > budget:
        problems.append(f"took {seconds:.1f} s, budget {budget:g} s")
    return problems


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    problems: tuple[str, ...] = ()
    severity: int = -1
    seconds: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """One round of probes of one endpoint; ``passed`` is None when it could not be
    judged (the endpoint did not answer)."""

    endpoint: str
    url: str
    model: str
    passed: bool | None
    reason: str
    at: str
    probe_set: str
    cases: tuple[CaseResult, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cases": [asdict(c) for c in self.cases]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        cases = tuple(CaseResult(**{**c, "problems": tuple(c.get("problems", ()))})
                      for c in data.get("cases", ()))
        return cls(**{**data, "cases": cases})

    def state(self) -> ProbeState:
        return ProbeState(bool(self.passed), self.reason, self.at)

    def applies_to(self, endpoint: Endpoint) -> bool:
        """Whether the verdict was reached on this endpoint as configured here (a rolling
        update may give another process another URL or model)."""
        return (self.endpoint, self.url, self.model) == (endpoint.name, endpoint.url,
                                                         endpoint.model)


def summarise(results: list[CaseResult]) -> str:
    """The reason of a failed round: each failed case and its problems (pure)."""
    return "; ".join(f"{r.name}: {', '.join(r.problems)}" for r in results if not r.passed)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- running ----------------------------------------------------------------------------


class ProbeRunner:
    """Sends a probe set to one endpoint of ``client`` and judges the answers (no
    state: ``xrayvision probe`` and the :class:`Prober` use it)."""

    def __init__(self, client: ModelClient, prompts: Prompts, probe_set: ProbeSet, *,
                 budget: float, scale: Callable[[bytes], bytes] = lambda png: png,
                 max_tokens: int = 1024) -> None:
        self.client = client
        self.prompts = prompts
        self.probe_set = probe_set
        self.budget = budget
        self.scale = scale
        self.max_tokens = max_tokens

    async def run_case(self, endpoint: Endpoint, case: ProbeCase) -> CaseResult:
        """One case on one endpoint: the read, then CHK, both within the budget.
        Raises ModelUnavailable when the endpoint does not answer at all."""
        started = time.perf_counter()
        messages = await asyncio.to_thread(case.messages, self.prompts, self.scale)
        try:
            read = await self.client.chat_on(endpoint, messages, call="probe",
                                             max_tokens=self.max_tokens,
                                             within=self.budget)
            report = parse_report(read.text)
            left = max(1.0, self.budget - (time.perf_counter() - started))
            chk = await self.client.chat_on(endpoint, check_messages(self.prompts, report.text),
                                            call="probe", max_tokens=256, temperature=0.0,
                                            within=left)
            check = parse_check(chk.text)
        except ModelUnavailable as exc:
            if "no answer within" in str(exc):
                seconds = time.perf_counter() - started
                metrics.MODEL_PROBE_SECONDS.labels(endpoint.name).observe(seconds)
                return CaseResult(case.name, False,
                                  (f"no answer within the budget of {self.budget:g} s",),
                                  seconds=round(seconds, 2))
            raise
        except (ModelBadOutput, ModelRejected) as exc:
            return CaseResult(case.name, False, (f"{type(exc).__name__}: {exc}"[:300],))
        seconds = time.perf_counter() - started
        metrics.MODEL_PROBE_SECONDS.labels(endpoint.name).observe(seconds)
        problems = judge(case, report, check, seconds, self.budget)
        return CaseResult(case.name, not problems, tuple(problems), check.severity,
                          round(seconds, 2))

    async def probe_endpoint(self, endpoint: Endpoint) -> Verdict:
        """Every case on ``endpoint``; the verdict (passed None: not reachable)."""
        results: list[CaseResult] = []
        try:
            for case in self.probe_set.cases:
                results.append(await self.run_case(endpoint, case))
        except ModelUnavailable as exc:
            metrics.MODEL_PROBE_RUNS.labels(endpoint.name, "unreachable").inc()
            return Verdict(endpoint.name, endpoint.url, endpoint.model, None, str(exc)[:500],
                           now_iso(), self.probe_set.version, tuple(results))
        passed = all(r.passed for r in results)
        metrics.MODEL_PROBE_RUNS.labels(endpoint.name, "passed" if passed else "failed").inc()
        metrics.MODEL_PROBE_PASSING.labels(endpoint.name).set(1 if passed else 0)
        metrics.MODEL_PROBE_LAST_RUN.labels(endpoint.name).set(time.time())
        return Verdict(endpoint.name, endpoint.url, endpoint.model, passed,
                       summarise(results)[:1000], now_iso(), self.probe_set.version,
                       tuple(results))


class Prober:
    """Probes each endpoint of the runner's client on schedule and acts on the verdicts."""

    def __init__(self, runner: ProbeRunner, db: Database, bus: Bus, *, interval: float,
                 retry_interval: float, shadow: Endpoint | None = None) -> None:
        self.runner = runner
        self.client = runner.client
        self.db = db
        self.bus = bus
        self.interval = interval
        self.retry_interval = retry_interval
        # The shadow is probed too (its verdict is news for whoever would promote it),
        # but it routes nothing: no process's client has it.
        self.targets = [*self.client.endpoints, *([shadow] if shadow else [])]
        self.due = {e.name: 0.0 for e in self.targets}  # monotonic time of the next round
        self.shadow_passed: bool | None = None  # the shadow's last verdict, for the log

    def probe_soon(self, name: str | None = None) -> None:
        """Brings the next round of endpoint ``name`` (of all when None) forward to now."""
        for endpoint in self.due:
            if name in (None, endpoint):
                self.due[endpoint] = 0.0

    async def probe_endpoint(self, endpoint: Endpoint) -> Verdict:
        return await self.runner.probe_endpoint(endpoint)

    async def record(self, verdict: Verdict) -> None:
        """Acts on a judged verdict here, keeps it and tells the other processes."""
        if verdict.passed is None:
            log.warning("model probes could not reach the endpoint; not judged",
                        extra={"endpoint": verdict.endpoint, "reason": verdict.reason})
            return
        # (the client logs a change of verdict, with the reason, in every process; the
        # shadow is no endpoint of the client's, so its change is logged here)
        if verdict.endpoint not in self.client.healthy and \
                self.shadow_passed != verdict.passed:
            self.shadow_passed = verdict.passed
            log.log(logging.INFO if verdict.passed else logging.WARNING,
                    "the shadow model passes its known-answer probes" if verdict.passed
                    else "the shadow model fails its known-answer probes",
                    extra={"endpoint": verdict.endpoint, "reason": verdict.reason})
        await self.client.set_probe(verdict.endpoint, verdict.state())
        data = verdict.as_dict()
        await self.db.write(repo.set_state, STATE_PREFIX + verdict.endpoint, json.dumps(data))
        # The cases stay in the state row: NOTIFY carries under 8 kB.
        await self.bus.publish(MODEL_PROBE, **{k: v for k, v in data.items() if k != "cases"})

    async def run(self, tick: float = 1.0) -> None:
        """Probes each endpoint at start, when it comes back up, every ``interval``
        seconds, and every ``retry_interval`` while it fails (or could not be reached);
        a down endpoint waits for the health check."""
        due = self.due
        was_up = {e.name: self.client.healthy.get(e.name, True) for e in self.targets}
        while True:
            for endpoint in self.targets:
                up = self.client.healthy.get(endpoint.name, True)  # (the shadow: unchecked)
                if up and not was_up[endpoint.name]:
                    due[endpoint.name] = 0.0  # (re)started: it may serve something else
                was_up[endpoint.name] = up
                if not up or time.monotonic() < due[endpoint.name]:
                    continue
                try:
                    verdict = await self.probe_endpoint(endpoint)
                    await self.record(verdict)
                except Exception:  # noqa: BLE001 - the database away: the next round keeps it
                    log.warning("a model probe round could not be recorded",
                                extra={"endpoint": endpoint.name}, exc_info=True)
                    due[endpoint.name] = time.monotonic() + self.retry_interval
                    continue
                wait = self.interval if verdict.passed else self.retry_interval
                due[endpoint.name] = time.monotonic() + wait
            await asyncio.sleep(tick)


async def apply_verdicts(client: ModelClient, verdicts: list[dict[str, Any]]) -> None:
    """Applies stored or published verdicts to ``client``: those reached on its
    endpoints as configured here."""
    for data in verdicts:
        try:
            verdict = Verdict.from_dict(data)
        except (TypeError, ValueError):
            log.warning("an unreadable model probe verdict was ignored")
            continue
        endpoint = next((e for e in client.endpoints if e.name == verdict.endpoint), None)
        if endpoint is not None and verdict.passed is not None and verdict.applies_to(endpoint):
            await client.set_probe(endpoint.name, verdict.state())


def stored_verdicts(session) -> list[dict[str, Any]]:
    """The last verdict of each endpoint (the ``state`` rows), for the API and the
    operator."""
    found = []
    for _key, value in repo.states_with_prefix(session, STATE_PREFIX):
        try:
            found.append(json.loads(value))
        except ValueError:
            continue
    return found


async def follow_probes(client: ModelClient, db: Database, bus: Bus) -> None:
    """Keeps ``client``'s routing in step with the prober's verdicts (until cancelled):
    the stored ones at start, then each one published."""
    with bus.subscribe() as events:
        await apply_verdicts(client, await db.read_patiently(stored_verdicts))
        async for event in events:
            if event.type == MODEL_PROBE:
                await apply_verdicts(client, [event.data])
            elif event.type in (GAP, RECONNECTED):  # verdicts may have been missed
                await apply_verdicts(client, await db.read_patiently(stored_verdicts))
