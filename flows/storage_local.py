"""Files on local disk, written atomically.

A file is written beside its target and renamed over it, so no reader sees half a part;
an append (the journal of finished rows) is one write on a file opened for appending,
one whole batch per call.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 4 * 1024 * 1024


class LocalStorage:
    """Files on local disk."""

    cheap_appends = True

    def expand(self, pattern: str) -> list[str]:
        path = Path(pattern)
        if path.is_dir():
            return sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))

    def join(self, folder: str, name: str) -> str:
        return os.path.join(folder, name)

    def exists(self, location: str) -> bool:
        return os.path.isfile(location)

    def read_bytes(self, location: str) -> bytes:
        return Path(location).read_bytes()

    def iter_bytes(self, location: str) -> Iterator[bytes]:
        with open(location, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk

    @contextmanager
    def local_copy(self, location: str) -> Iterator[str]:
        yield location

    def write_bytes(self, location: str, data: bytes) -> None:
        with self._staged(location) as f:
            f.write(data)

    def publish(self, local_path: str, location: str) -> None:
        with self._staged(location) as f, open(local_path, "rb") as src:
            shutil.copyfileobj(src, f)

    def append(self, location: str, data: bytes) -> None:
        # One write(2) on an O_APPEND descriptor: a killed process leaves whole batches behind
        # (a crash of the machine itself may cut the last one; readers skip a torn last line).
        os.makedirs(os.path.dirname(location) or ".", exist_ok=True)
        fd = os.open(location, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def list_names(self, folder: str) -> list[str]:
        root = Path(folder)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def delete(self, location: str) -> None:
        try:
            os.unlink(location)
        except FileNotFoundError:
            pass
        folder = os.path.dirname(location)
        if os.path.basename(folder).startswith("_"):  # our own bookkeeping folder (the journal's), once empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def fingerprint(self, location: str) -> dict[str, Any]:
        st = os.stat(location)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    @contextmanager
    def _staged(self, location: str) -> Iterator[IO[bytes]]:
        folder = os.path.dirname(location) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, location)
        except BaseException:
            os.unlink(tmp)
            raise
