"""``xrayvision import PATH...``: DICOM files and folders (recursive) through the same
record-then-convert path as the SCP, with progress and a summary.

A bare data set without the DICM prefix and file meta (old archives, some modalities'
exports; the network path receives data sets that way) is imported too: it is stored
with the file meta its encoding implies."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy.exc import SQLAlchemyError

from xrayvision import metrics
from xrayvision.config import Settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.db.models import ERROR, IGNORE
from xrayvision.dicom.ingest import ConflictingInstance, Outcome, record_instance
from xrayvision.dicom.metadata import BadInstance
from xrayvision.dicom.worker import ConversionWorker
from xrayvision.events import Bus
from xrayvision.images import ImageStore


@dataclass
class ImportSummary:
    imported: int = 0
    duplicates: int = 0
    ignored: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"imported: {self.imported}", f"duplicates: {self.duplicates}",
               f"ignored (no region rule matched): {self.ignored}",
               f"failed: {len(self.failed)}"]
        out += [f"  {path}: {reason}" for path, reason in self.failed]
        return out


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Regular files under ``paths`` (folders recursively), in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


class Progress:
    """A one-line bar on a terminal; a line per tenth otherwise (logs stay readable)."""

    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def step(self) -> None:
        self.done += 1
        if self.tty:
            filled = int(30 * self.done / max(self.total, 1))
            self.stream.write(f"\rimporting [{'#' * filled}{'.' * (30 - filled)}] "
                              f"{self.done}/{self.total}")
            if self.done == self.total:
                self.stream.write("\n")
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            self.stream.write(f"importing: {self.done}/{self.total}\n")
        self.stream.flush()


def read_dataset(data: bytes) -> tuple[Dataset, bytes]:
    """The data set of a DICOM file and the file's bytes to store (pixel data stays
    encoded: nothing is decoded). A bare data set gets the file meta its encoding implies
    and is stored as a DICOM file; raises InvalidDicomError for anything that is neither."""
    try:
        return dcmread(io.BytesIO(data)), data
    except InvalidDicomError as not_a_file:
        try:
            ds = dcmread(io.BytesIO(data), force=True)
            bare = "SOPInstanceUID" in ds and "SOPClassUID" in ds
        except Exception:  # noqa: BLE001 - whatever force made of it, it is not DICOM
            bare = False
        if not bare:
            raise not_a_file from None
    implicit, little = ds.original_encoding
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return ds, out.getvalue()


def _read_and_record(settings: Settings, db: Database, store: ImageStore, path: Path):
    ds, data = read_dataset(path.read_bytes())
    return record_instance(settings, db, store, ds, data)


async def import_paths(settings: Settings, db: Database, store: ImageStore, bus: Bus,
                       paths: Iterable[Path],
                       progress: Callable[[int], Progress] = Progress) -> ImportSummary:
    files = list(iter_files(paths))
    bar = progress(len(files))
    summary = ImportSummary()
    worker = ConversionWorker(settings, db, store, bus, sweep_interval=3600)
    runner = asyncio.create_task(worker.run())
    stored: dict[str, str] = {}
    try:
        for path in files:
            try:
                recorded = await asyncio.to_thread(_read_and_record, settings, db, store, path)
            except InvalidDicomError:
                summary.failed.append((str(path), "not a DICOM file (no DICM prefix or file "
                                                  "meta information)"))
            except (BadInstance, ConflictingInstance) as exc:
                summary.failed.append((str(path), str(exc)))
            except (OSError, SQLAlchemyError) as exc:
                summary.failed.append((str(path), f"cannot record: {str(exc)[:200]}"))
            except Exception as exc:  # noqa: BLE001 - a broken file can raise anything
                summary.failed.append((str(path), f"unreadable: {type(exc).__name__}: "
                                                  f"{str(exc)[:200]}"))
            else:
                metrics.DICOM_INSTANCES.labels(recorded.outcome.value, "import",
                                               recorded.exam.region or "none").inc()
                if recorded.outcome is Outcome.DUPLICATE:
                    summary.duplicates += 1
                else:
                    stored[recorded.exam.uid] = str(path)
                    worker.submit_threadsafe(recorded.exam.uid)
            bar.step()
        await asyncio.sleep(0)  # let the submissions above reach the worker's queue
        await worker.drain()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    for uid, name in stored.items():
        row = await db.read(repo.get_exam, uid)
        if row is None or row.exam.status == ERROR:
            summary.failed.append((name, row.exam.error if row else "exam missing"))
        elif row.exam.status == IGNORE:
            summary.ignored += 1
        else:
            summary.imported += 1
    return summary
