"""pynetdicom event handlers, one function per DICOM event. Their dependencies come in
an :class:`IngestContext` bound when the handlers are registered (``scp.start_scp``).

They run in pynetdicom's association threads: blocking calls are fine here, pixel work is
not (it is handed to the conversion worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from xrayvision import metrics
from xrayvision.config import Settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.dicom.ingest import (
    ConflictingInstance,
    Outcome,
    WrongSOPClass,
    record_file,
    record_instance,
)
from xrayvision.dicom.metadata import BadInstance
from xrayvision.dicom.transport import GARBLED_SOP_CLASS
from xrayvision.images import ImageStore
from xrayvision.logs import first_line

log = logging.getLogger(__name__)

SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: the UID is allocated to another instance
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class IngestContext:
    settings: Settings
    db: Database
    store: ImageStore
    on_stored: Callable[[str, int], None]  # hands (UID, priority) to the conversion worker


def _peer(event) -> tuple[str, str]:
    # On our own C-GET association the sender is the acceptor (the PACS).
    peer = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
    return str(peer.ae_title).strip(), f"{peer.address}:{peer.port}"


def _streamed_path(event):
    """The file pynetdicom streamed the dataset into (STORE_RECV_CHUNKED_DATASET), else
    None (the dataset was received in memory)."""
    try:
        return event.dataset_path
    except AttributeError:
        return None


def _write_failure(event) -> OSError | None:
    """The error that stopped the data set's file from being written (disk full), when
    it was received into a :class:`~xrayvision.dicom.staging.StagedFile`; else None."""
    return getattr(getattr(event.request, "_dataset_file", None), "failed", None)


def handle_echo(event) -> int:
    """C-ECHO: verification always succeeds."""
    return SUCCESS


def handle_store(event, ctx: IngestContext) -> int:
    """C-STORE: success only once the instance is durably recorded (status ``none``)."""
    started = time.perf_counter()
    calling, _ = _peer(event)
    sop_class = str(event.context.abstract_syntax)
    garbled = getattr(event.request, GARBLED_SOP_CLASS, None)
    if garbled is not None:
        return _refused(ctx, event, SOP_CLASS_NOT_SUPPORTED, calling, f"C-STORE names SOP "
                        f"Class {garbled[:64]!r} on a presentation context for {sop_class}")
    unwritten = _write_failure(event)
    if unwritten is not None:  # the rest was read and dropped: this instance alone fails
        return _failed(OUT_OF_RESOURCES, calling, f"cannot store the received data set: "
                       f"{unwritten.strerror or type(unwritten).__name__}")
    try:
        path = _streamed_path(event)
        if path is not None:
            recorded = record_file(
                ctx.settings, ctx.db, ctx.store, path, calling_aet=calling, sop_class=sop_class,
                transfer_syntax=str(event.context.transfer_syntax))
        else:
            ds = event.dataset
            ds.file_meta = event.file_meta
            recorded = record_instance(
                ctx.settings, ctx.db, ctx.store, ds, event.encoded_dataset(include_meta=True),
                calling_aet=calling, sop_class=sop_class,
            )
    except ConflictingInstance as exc:
        _audit_conflict(ctx, calling, _peer(event)[1], exc)
        return _failed(DUPLICATE_SOP_INSTANCE, calling, str(exc))
    except WrongSOPClass as exc:
        return _refused(ctx, event, DATASET_DOES_NOT_MATCH_SOP_CLASS, calling, str(exc))
    except BadInstance as exc:
        return _refused(ctx, event, CANNOT_UNDERSTAND, calling, str(exc))
    except (OSError, SQLAlchemyError) as exc:
        return _failed(OUT_OF_RESOURCES, calling, f"cannot record: {type(exc).__name__}: "
                       f"{first_line(exc)}")
    except Exception as exc:  # noqa: BLE001 - a malformed dataset can raise anything
        return _refused(ctx, event, CANNOT_UNDERSTAND, calling,
                        f"{type(exc).__name__}: {str(exc)[:200]}")
    metrics.DICOM_STORE_SECONDS.observe(time.perf_counter() - started)
    metrics.DICOM_INSTANCES.labels(recorded.outcome.value, "scp",
                                   recorded.exam.region or "none").inc()
    if recorded.outcome is Outcome.STORED:
        ctx.on_stored(recorded.exam.uid, recorded.exam.priority)
    log.info("instance received", extra={"uid": recorded.exam.uid, "calling_aet": calling,
                                          "outcome": recorded.outcome.value})
    return SUCCESS


def _audit_conflict(ctx: IngestContext, calling: str, remote: str,
                    exc: ConflictingInstance) -> None:
    """A UID sent again for another patient or study is a safety event: audited (which
    fields differ, not their values)."""
    try:
        ctx.db.write_sync(repo.audit, "dicom.conflict", username=calling, target=exc.uid,
                          remote=remote[:64], detail=f"differs in: {', '.join(exc.fields)}")
    except SQLAlchemyError:
        log.warning("could not audit a conflicting instance")


def _refused(ctx: IngestContext, event, status: int, calling: str, reason: str) -> int:
    """A refusal for what the instance is (not for a passing fault): logged, and audited
    as ``dicom.refused`` with the status and the reason, so that it can be found later
    (the sender's log may be all the site has otherwise). Never patient data: the
    reasons name UIDs, attributes and sizes only."""
    uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")[:64]
    try:
        ctx.db.write_sync(repo.audit, "dicom.refused", username=calling, target=uid,
                          remote=_peer(event)[1][:64], detail=f"0x{status:04X}: {reason}")
    except SQLAlchemyError:
        log.warning("could not audit a refused instance")
    return _failed(status, calling, reason)


def _failed(status: int, calling: str, reason: str) -> int:
    metrics.DICOM_INSTANCES.labels("failed", "scp", "unknown").inc()
    log.warning("instance refused", extra={"status": f"0x{status:04X}", "calling_aet": calling,
                                           "reason": reason})
    return status


def handle_closed(event) -> None:
    """The connection closed (released, aborted or lost): the file of a data set still
    arriving is removed at once; the sender was not answered for it."""
    message = getattr(event.assoc.dimse, "message", None)
    staged = getattr(message, "_data_set_file", None)
    if staged is None:
        return
    with contextlib.suppress(OSError):
        staged.close()
        os.unlink(staged.name)
    log.info("unfinished transfer removed")


def handle_accepted(event) -> None:
    metrics.DICOM_ASSOCIATIONS.labels("accepted").inc()


def handle_aborted(event) -> None:
    metrics.DICOM_ASSOCIATIONS.labels("aborted").inc()


def rejection_reason(calling: str, called: str, ours: str, allowed: list[str],
                     require_called: bool, over_limit: bool) -> str:
    """Why pynetdicom refused an association request, in its order (the last that
    applies is what it answered; pure)."""
    reason = "no reason given (user identity refused)"
    if allowed and calling not in allowed:
        reason = f"calling AE title {calling!r} is not in [dicom] allowed_calling_aets"
    if require_called and called != ours:
        reason = f"called AE title {called!r} is not ours ({ours!r})"
    if over_limit:
        reason = "too many associations at once ([dicom] max_associations)"
    return reason


def handle_rejected(event, ctx: IngestContext) -> None:
    """An association refused (unknown calling AE, wrong called AE, too many at once):
    logged and audited with the AE titles the peer gave and the reason."""
    metrics.DICOM_ASSOCIATIONS.labels("rejected").inc()
    calling, remote = _peer(event)
    assoc, ae = event.assoc, event.assoc.ae
    called = str(getattr(assoc.requestor.primitive, "called_ae_title", "") or "").strip()
    active = [a for a in ae.active_associations if a.is_acceptor]
    reason = rejection_reason(
        calling, called, str(assoc.acceptor.ae_title).strip(),
        [a.strip() for a in ae.require_calling_aet], bool(ae.require_called_aet),
        len(active) > ae.maximum_associations)
    log.warning("association rejected", extra={"calling_aet": calling, "called_aet": called,
                                               "remote": remote, "reason": reason})
    try:
        ctx.db.write_sync(repo.audit, "dicom.rejected", username=calling, remote=remote[:64],
                          detail=f"called AE {called!r}: {reason}")
    except SQLAlchemyError:
        log.warning("could not audit a rejected association")
