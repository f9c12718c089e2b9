"""Small helpers every stage shares: atomic file writes, a file that counts the bytes read through it, and
whether a model name is a Hub id or a local path."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path


def is_hub_id(name: str) -> bool:
    """A Hub repository id (``owner/name``) that is not also a local path (``./runs/x`` or an existing folder)."""
    return bool(re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name)) and not Path(name).exists()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class CountingFile(io.RawIOBase):
    """A read-only binary file that counts the bytes read through it (``read_bytes``, and ``counter[0]`` when
    given, which several files can share): the measure of read amplification. Seeks are free, as on a disk."""

    def __init__(self, f, counter: list[int] | None = None):
        self.f, self.read_bytes, self.counter = f, 0, counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        b[: len(data)] = data
        self.read_bytes += len(data)
        if self.counter is not None:
            self.counter[0] += len(data)
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        super().close()
