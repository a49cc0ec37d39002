"""Where received data sets are written while they arrive, and what a failed write does.

pynetdicom streams each C-STORE data set into a temporary file
(``STORE_RECV_CHUNKED_DATASET``) and hands its path to the handler, which moves it into
the image store. Two things go wrong with plain temporary files:

- a write that fails (disk full, quota, I/O error) raises inside pynetdicom's DIMSE
  layer, which aborts the whole association and leaves the partial file behind; the
  sender is told nothing about that instance, and the next ones are lost with it;
- a process killed in the middle of a transfer leaves its partial files in the
  temporary folder for good.

:class:`Staging` gives each process its own folder under the temporary folder
(``xrayvision-incoming-*``), held by a lock (``flock``) for the process's life: at
start, the folders whose lock is free belong to processes that are gone and are removed
at once, whatever their age. Its files are :class:`StagedFile`\\ s: the first failed
write is kept (``failed``), the file is emptied to give the space back, and what
follows of the data set is read and dropped, so that the association goes on and the
instance alone is refused (0xA700, ``dicom.handlers``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pynetdicom import dimse_messages

log = logging.getLogger(__name__)

PREFIX = "xrayvision-incoming-"
LOCK = ".lock"


class StagedFile:
    """A received data set's file, written without a buffer; what pynetdicom and the
    receive path (``dicom.transport``) use of a ``NamedTemporaryFile``: ``name``,
    ``write``, ``flush`` (also as ``file.flush``), ``fileno``, ``close``, ``closed``.

    A write that fails records its error in :attr:`failed` instead of raising; the file
    is then truncated and every later write is dropped (reported as written).
    """

    def __init__(self, fd: int, path: str) -> None:
        self.name = path
        self._raw = open(fd, "wb", buffering=0)  # noqa: SIM115 - closed by its owner
        self.failed: OSError | None = None

    @property
    def file(self) -> StagedFile:  # pynetdicom calls ``.file.flush()``
        return self

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def fileno(self) -> int:
        return self._raw.fileno()

    def write(self, data) -> int:
        size = len(data)
        if self.failed is None and not self._raw.closed:  # closed: the transfer ended
            view = memoryview(data)
            try:
                while view:
                    view = view[self._raw.write(view) or 0:]
            except OSError as exc:
                self.fail(exc)
        return size

    def fail(self, exc: OSError) -> None:
        """Records the first write error and empties the file (its space is freed)."""
        if self.failed is None:
            self.failed = exc
            log.warning("received data set cannot be written; the rest of it is dropped "
                        "and the instance refused: %s", exc.strerror or exc)
            with contextlib.suppress(OSError):
                os.ftruncate(self._raw.fileno(), 0)

    def flush(self) -> None:
        """Unbuffered: nothing waits to be written."""

    def close(self) -> None:
        self._raw.close()

    def discard(self) -> None:
        """Closes and removes the file (an unfinished transfer)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name)


class Staging:
    """This process's folder for data sets being received (see the module docstring).

    :meth:`open` sweeps the folders of processes that are gone, creates and locks this
    one's; :meth:`close` removes it. Blocking (file system): call from a thread.
    """

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base if base is not None else tempfile.gettempdir())
        self.folder: Path | None = None
        self._lock_fd: int | None = None
        self.swept = 0  # files of gone processes removed by open()

    def open(self) -> Staging:
        self.base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.base))
        fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else holds it
        self.folder, self._lock_fd = folder, fd
        self.swept = self._sweep()
        return self

    def _sweep(self) -> int:
        """Removes the folders of processes that are gone (their lock is free)."""
        removed = 0
        for entry in self.base.glob(PREFIX + "*"):
            if entry == self.folder or not entry.is_dir() or entry.is_symlink():
                continue
            try:
                fd = os.open(entry / LOCK, os.O_RDWR)
            except OSError:  # no lock file: being created right now, or not ours
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its process is alive
                os.close(fd)
                continue
            try:
                removed += sum(1 for f in entry.iterdir() if f.name != LOCK)
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                os.close(fd)
        return removed

    def new_file(self, *_args, suffix: str = ".dcm", **_kwargs) -> StagedFile:
        """A new :class:`StagedFile` in this process's folder; takes (and ignores)
        ``NamedTemporaryFile``'s arguments but ``suffix``."""
        if self.folder is None:
            raise RuntimeError("staging folder not open")
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self.folder)
        return StagedFile(fd, path)

    def install(self) -> None:
        """Makes pynetdicom write received data sets here (a process-wide setting, like
        ``STORE_RECV_CHUNKED_DATASET``; this process is the one that receives)."""
        dimse_messages.NamedTemporaryFile = self.new_file  # type: ignore[assignment]

    def close(self) -> None:
        """Removes this process's folder and what is left in it; pynetdicom goes back
        to the temporary folder if it was writing here."""
        if getattr(dimse_messages, "NamedTemporaryFile", None) == self.new_file:
            dimse_messages.NamedTemporaryFile = tempfile.NamedTemporaryFile
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
