"""One process at a time for work that two processes must not do at once on the same files: building an
index in one folder, downloading one file. Advisory locks (`flock`) on a small lock file: the kernel
releases them when the holder exits, even when it is killed, so a crash never leaves a stale lock (only,
then, the empty lock file, which the next run reuses). The holder deletes the file when it is done; a
process that locked a file which was deleted meanwhile notices (another inode at the path) and starts over,
so two processes never both hold "the" lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; such runs are not locked against each other (README Limitations)
    fcntl = None


class Locked(Exception):
    """Another process holds the lock; `holder` is its process id as it wrote it (may be empty)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is locked by process {holder or '(unknown)'}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if need be) for the `with` block. If another process holds
    it: wait=False raises `Locked` at once; wait=True calls `on_wait(holder pid)` and blocks until it is
    free."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    waited = False
    while True:
        f = open(path, "a+", encoding="ascii")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()
                if not wait:
                    raise Locked(path, holder) from None
                if on_wait is not None and not waited:
                    on_wait(holder)
                waited = True
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder deleted the file we locked: lock the one at the path now
                continue
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # while still holding it: see the module docstring
            return
        finally:
            f.close()  # closing releases the lock
