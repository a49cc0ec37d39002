"""Image store: PNGs for the dashboard and the model, and received DICOM awaiting conversion.

Two backends behind one interface, chosen by ``[images] backend``:

- ``filesystem``: ``<path>/<kind>/<2 hex>/<uid>.<kind>``; the folder comes from a hash of
  the UID, and the UID is validated first, so no request can name a path of its own.
  Writes go to a temporary file that is fsynced and renamed into place: a reader sees the
  whole file or nothing, and a stored file survives a crash.
- ``database``: the ``images`` table (for Kubernetes without a shared volume).

All methods block; call them from a thread (``Database.run_in_pool``, ``asyncio.to_thread``).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Protocol, cast

import cv2
import numpy as np
from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from xrayvision.db.engine import Database, rowcount
from xrayvision.db.models import Image, utcnow

KINDS = ("png", "dcm")
# DICOM UID: digits and dots, at most 64 characters. PS3.5 9.1 forbids a component's
# leading zero (``1.2.03``), but real modalities send such UIDs and DCMTK accepts them:
# they are kept exactly as received (they are still only digits and dots, safe in a
# path and a query).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):
    """Not a DICOM UID: refused before it is used in a path or a query."""


def validate_uid(uid: str) -> str:
    """Returns ``uid`` when it is a valid DICOM UID, else raises InvalidUID."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
        raise InvalidUID(f"not a DICOM UID: {uid[:80]!r}" if isinstance(uid, str) else "not a UID")
    return uid


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown image kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


class ImageStore(Protocol):
    def put(self, uid: str, kind: str, data: bytes) -> None:
        """Stores ``data`` durably, replacing what was there."""

    def get(self, uid: str, kind: str) -> bytes | None:
        """The stored bytes; None when absent."""

    def put_file(self, uid: str, kind: str, src: Path) -> None:
        """Stores the file at ``src`` durably; ``src`` may be moved (it is not kept)."""

    def put_new(self, uid: str, kind: str, data: bytes) -> bool:
        """Stores ``data`` durably only if nothing is stored under that name, atomically
        (of two at once, one wins); returns False, storing nothing, when something is."""

    def put_file_new(self, uid: str, kind: str, src: Path) -> bool:
        """:meth:`put_new` for the file at ``src``: moved when stored, left when not."""

    def age(self, uid: str, kind: str) -> float | None:
        """Seconds since the item was stored; None when absent."""

    def delete(self, uid: str, kind: str) -> bool:
        """Removes the item; returns False when there was none."""

    def exists(self, uid: str, kind: str) -> bool: ...


class FilesystemStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, uid: str, kind: str) -> Path:
        validate_uid(uid)
        shard = hashlib.sha1(uid.encode(), usedforsecurity=False).hexdigest()[:2]
        return self.root / _check_kind(kind) / shard / f"{uid}.{kind}"

    def put(self, uid: str, kind: str, data: bytes) -> None:
        self._write(self.path(uid, kind), lambda out: out.write(data))

    def put_file(self, uid: str, kind: str, src: Path) -> None:
        target = self.path(uid, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(src, target)  # same filesystem: no copy at all
        except OSError:  # another filesystem (EXDEV): copy, then the same atomic rename
            with open(src, "rb") as fh:
                self._write(target, lambda out: shutil.copyfileobj(fh, out, 1024 * 1024))
            return
        self._sync_dir(target.parent)

    def put_new(self, uid: str, kind: str, data: bytes) -> bool:
        return self._new(self.path(uid, kind), lambda out: out.write(data))

    def put_file_new(self, uid: str, kind: str, src: Path) -> bool:
        target = self.path(uid, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            stored = self._link_new(Path(src), target)  # same filesystem: no copy at all
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with open(src, "rb") as fh:  # another filesystem: a copy next to the target
                stored = self._new(target, lambda out: shutil.copyfileobj(fh, out,
                                                                           1024 * 1024))
        if stored:
            Path(src).unlink(missing_ok=True)
        return stored

    def _new(self, target: Path, fill) -> bool:
        """Links a staged copy at ``target`` unless that exists; the temporary name is
        removed either way."""
        tmp = self._staged(target, fill)
        try:
            return self._link_new(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _link_new(self, src: Path, target: Path) -> bool:
        """A hard link of ``src`` at ``target`` unless ``target`` exists: the atomic
        "create if absent" of a whole, fsynced file."""
        try:
            os.link(src, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            # a filesystem without hard links (some network shares): check, then rename;
            # two writers at the same moment are then told apart by the database row only
            if target.exists():
                return False
            os.replace(src, target)
        self._sync_dir(target.parent)
        return True

    def age(self, uid: str, kind: str) -> float | None:
        try:
            return max(0.0, time.time() - self.path(uid, kind).stat().st_mtime)
        except FileNotFoundError:
            return None

    def _staged(self, target: Path, fill) -> Path:
        """A fsynced temporary file beside ``target`` holding what ``fill`` writes."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def _write(self, target: Path, fill) -> None:
        """Writes through a fsynced temporary file renamed into place."""
        tmp = self._staged(target, fill)
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._sync_dir(target.parent)

    @staticmethod
    def _sync_dir(folder: Path) -> None:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a crash
        finally:
            os.close(dir_fd)

    def get(self, uid: str, kind: str) -> bytes | None:
        try:
            return self.path(uid, kind).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, uid: str, kind: str) -> bool:
        try:
            self.path(uid, kind).unlink()
        except FileNotFoundError:
            return False
        return True

    def exists(self, uid: str, kind: str) -> bool:
        return self.path(uid, kind).is_file()


def _put(session: Session, uid: str, kind: str, data: bytes) -> None:
    image = session.get(Image, (uid, kind))
    if image is None:
        session.add(Image(uid=uid, kind=kind, data=data, created=utcnow()))
    else:
        image.data = data


def _put_new(session: Session, uid: str, kind: str, data: bytes) -> bool:
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    # RETURNING says whether a row went in (psycopg's row count does not, here)
    table = cast(Table, Image.__table__)
    return session.connection().execute(
        insert(table).values(uid=uid, kind=kind, data=data, created=utcnow())
        .on_conflict_do_nothing(index_elements=["uid", "kind"])
        .returning(table.c.uid)).first() is not None


def _age(session: Session, uid: str, kind: str) -> float | None:
    created = session.scalar(select(Image.created).where(Image.uid == uid,
                                                         Image.kind == kind))
    if created is None:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return max(0.0, (utcnow() - created).total_seconds())


def _get(session: Session, uid: str, kind: str) -> bytes | None:
    return session.scalar(select(Image.data).where(Image.uid == uid, Image.kind == kind))


def _exists(session: Session, uid: str, kind: str) -> bool:
    return session.scalar(
        select(Image.uid).where(Image.uid == uid, Image.kind == kind)) is not None


def _delete(session: Session, uid: str, kind: str) -> bool:
    return bool(rowcount(session.execute(
        delete(Image).where(Image.uid == uid, Image.kind == kind))))


class DatabaseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, uid: str, kind: str, data: bytes) -> None:
        self.db.write_sync(_put, validate_uid(uid), _check_kind(kind), data)

    def put_file(self, uid: str, kind: str, src: Path) -> None:
        self.put(uid, kind, Path(src).read_bytes())

    def put_new(self, uid: str, kind: str, data: bytes) -> bool:
        return self.db.write_sync(_put_new, validate_uid(uid), _check_kind(kind), data)

    def put_file_new(self, uid: str, kind: str, src: Path) -> bool:
        stored = self.put_new(uid, kind, Path(src).read_bytes())
        if stored:
            Path(src).unlink(missing_ok=True)
        return stored

    def age(self, uid: str, kind: str) -> float | None:
        return self.db.read_sync(_age, validate_uid(uid), _check_kind(kind))

    def get(self, uid: str, kind: str) -> bytes | None:
        return self.db.read_sync(_get, validate_uid(uid), _check_kind(kind))

    def delete(self, uid: str, kind: str) -> bool:
        return self.db.write_sync(_delete, validate_uid(uid), _check_kind(kind))

    def exists(self, uid: str, kind: str) -> bool:
        return self.db.read_sync(_exists, validate_uid(uid), _check_kind(kind))


def make_store(backend: str, path: Path, db: Database) -> ImageStore:
    """The store for ``[images] backend``: ``filesystem`` under ``path`` or ``database``."""
    if backend == "database":
        return DatabaseStore(db)
    return FilesystemStore(path)


def png_size(png: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header (pure, nothing decoded); None if not a PNG."""
    if len(png) < 24 or not png.startswith(b"\x89PNG\r\n\x1a\n") or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def fit_png(png: bytes, max_side: int) -> bytes:
    """The PNG scaled down so that its longest side is at most ``max_side`` (the model's
    input size), as PNG; the same bytes, not decoded, when it already fits or is not a
    PNG this can read."""
    size = png_size(png)
    if size is None or max_side <= 0 or max(size) <= max_side:
        return png
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return png
    scale = max_side / max(img.shape[:2])
    shape = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    ok, buf = cv2.imencode(".png", cv2.resize(img, shape, interpolation=cv2.INTER_AREA),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return buf.tobytes() if ok else png
