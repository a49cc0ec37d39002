"""Maintenance: one loop per installation (under a singleton lock).

Each run: an online backup of the SQLite database with a retention count (PostgreSQL
backups belong to the database's operator, see the docs), purge of ``error`` exams and
their images older than ``[maintenance] error_retention_days``, optional image retention
(``[images] retention_days``: PNGs of older exams removed, rows kept). Every run is
logged and counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from xrayvision import metrics
from xrayvision.config import Settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.db.models import utcnow
from xrayvision.images import KINDS, ImageStore

log = logging.getLogger(__name__)
BACKUP_PREFIX = "xrayvision-"


@dataclass
class RunReport:
    backup: Path | None = None
    backups_removed: int = 0
    errors_purged: int = 0
    images_removed: int = 0
    seconds: float = 0.0


def last_backup_time(names: list[str]) -> dt.datetime | None:
    """When the newest of these backup file names was taken (pure; None: none is a
    backup of ours)."""
    times = []
    for name in names:
        stamp = name.removeprefix(BACKUP_PREFIX).removesuffix(".db")
        if name.startswith(BACKUP_PREFIX) and name.endswith(".db"):
            try:
                times.append(dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ")
                             .replace(tzinfo=dt.UTC))
            except ValueError:
                continue
    return max(times, default=None)


def backup_due(names: list[str], now: dt.datetime, interval: float) -> bool:
    """Whether a backup is due: none taken in the last ``interval`` seconds (pure). A
    restart does not take one more, so ``backup_keep`` counts runs of the schedule
    (days, by default), not starts."""
    last = last_backup_time(names)
    # (a run comes a little less than an interval after the last one's backup)
    return last is None or now - last >= dt.timedelta(seconds=interval * 0.99)


def backup_sqlite(database_path: Path, backup_dir: Path, keep: int,
                  now: dt.datetime | None = None) -> tuple[Path, int]:
    """Online backup (SQLite backup API, consistent while writers run); keeps the newest
    ``keep`` backups. Returns (new backup, how many old ones were removed). Blocking."""
    now = now or utcnow()
    backup_dir.mkdir(parents=True, exist_ok=True)
    target = backup_dir / f"{BACKUP_PREFIX}{now:%Y%m%dT%H%M%S%fZ}.db"
    partial = target.with_suffix(".partial")
    src = sqlite3.connect(database_path)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst, pages=1024)
        finally:
            dst.close()
    finally:
        src.close()
    partial.replace(target)
    backups = sorted(backup_dir.glob(f"{BACKUP_PREFIX}*.db"))
    removed = 0
    for old in backups[: max(0, len(backups) - keep)]:
        old.unlink(missing_ok=True)
        removed += 1
    return target, removed


@dataclass
class Maintenance:
    settings: Settings
    db: Database
    store: ImageStore

    def _sqlite_path(self) -> Path | None:
        url = make_url(self.db.url)
        return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None

    def run_once(self, now: dt.datetime | None = None) -> RunReport:
        """One maintenance run (blocking; call it from a thread)."""
        now = now or utcnow()
        started = time.perf_counter()
        report = RunReport()
        keep = self.settings.maintenance.backup_keep
        database_path = self._sqlite_path()
        taken = [p.name for p in self.settings.backup_dir.glob(f"{BACKUP_PREFIX}*.db")] \
            if self.settings.backup_dir.is_dir() else []
        if database_path is not None and keep > 0 and backup_due(
                taken, now, self.settings.maintenance.interval):
            report.backup, report.backups_removed = backup_sqlite(
                database_path, self.settings.backup_dir, keep, now
            )
            metrics.BACKUP_LAST_SUCCESS.set(time.time())

        days = self.settings.maintenance.error_retention_days
        if days > 0:
            cutoff = now - dt.timedelta(days=days)
            per_study = self.settings.ai.read_per == "study"
            threshold = self.settings.processing.severity_threshold
            while uids := self.db.write_sync(repo.purge_error_exams, cutoff,
                                             read_per_study=per_study, threshold=threshold):
                report.errors_purged += len(uids)
                for uid in uids:
                    for kind in KINDS:
                        report.images_removed += self.store.delete(uid, kind)

        days = self.settings.images.retention_days
        if days > 0:
            cutoff, after = now - dt.timedelta(days=days), ""
            while uids := self.db.read_sync(repo.exams_received_before, cutoff, after):
                after = uids[-1]
                report.images_removed += sum(self.store.delete(uid, "png") for uid in uids)

        report.seconds = round(time.perf_counter() - started, 3)
        metrics.MAINTENANCE_PURGED.labels("error_exams").inc(report.errors_purged)
        metrics.MAINTENANCE_PURGED.labels("images").inc(report.images_removed)
        return report

    async def loop(self) -> None:
        """Runs maintenance every ``[maintenance] interval`` seconds, first at start-up."""
        while True:
            try:
                report = await asyncio.to_thread(self.run_once)
            except Exception:
                metrics.MAINTENANCE_RUNS.labels("error").inc()
                log.exception("maintenance run failed; retrying next interval")
            else:
                metrics.MAINTENANCE_RUNS.labels("ok").inc()
                log.info(
                    "maintenance run finished",
                    extra={
                        "backup": report.backup.name if report.backup else "",
                        "backups_removed": report.backups_removed,
                        "errors_purged": report.errors_purged,
                        "images_removed": report.images_removed,
                        "seconds": report.seconds,
                    },
                )
            await asyncio.sleep(self.settings.maintenance.interval)
