"""Small file helpers every package shares: atomic writes, file digests, the usable CPU count.

One atomic-write protocol for the whole code base: write to a temporary name in the destination folder, fsync,
rename into place. A reader therefore sees either the old file or the complete new one, never half of one; a
killed writer leaves only a ``.<name>.tmp-<pid>`` file that :func:`is_temp_name` recognises for clean-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write", "cpu_count", "file_digest", "is_temp_name", "tmp_name"]

_TMP_TAG = ".tmp-"


def tmp_name(final: str | Path) -> Path:
    """The temporary name a write to ``final`` goes through (same folder, so the rename stays atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}{_TMP_TAG}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is a temporary left by :func:`atomic_path` (e.g. by a killed process)."""
    return name.startswith(".") and _TMP_TAG in name


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and rename it to ``final``, on error remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(final: str | Path, data: bytes | str | Callable[[IO], None], *, text: bool | None = None) -> Path:
    """Write ``data`` (bytes, str, or a function given the open file) to ``final`` atomically; return ``final``.

    Args:
        final: destination path.
        data: the content, or a callable that writes it into the open file object.
        text: open the file in text mode (default: True for ``str`` data, False otherwise); text mode writes
            ``\\n`` line ends.
    """
    if text is None:
        text = isinstance(data, str)
    with atomic_path(final) as tmp:
        with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
    return Path(final)


def file_digest(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset`` or a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
