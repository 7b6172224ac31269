"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, durable: bool = True, **open_kwargs
) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success fsync it and rename it over ``path``;
    on any error remove it and leave ``path`` as it was. Parent folders are created.

    ``durable=False`` skips the fsync: the rename still guarantees that ``path`` never holds a partial
    file, but after a power loss it may hold nothing. For files that live only until something else
    copies them (a checkpoint staged in a temporary folder for Ray Tune to persist), where the fsync is
    pure cost (``benchmarks/MEASUREMENTS.md``, "atomic writes").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
