"""The lock of a run directory: `.lock`, flock'ed by the process that owns the run (its pid inside). The
kernel drops a flock when its holder dies, so a lock is never stale. A directory where the lock file cannot
be created or opened (read-only, full, no permission) is one line naming it (diskio.DiskError)."""
from __future__ import annotations

import os

from ..diskio import DiskError, reason
from ..errors import TinyRLHFError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


class RunInUse(TinyRLHFError):
    """Another live process holds the run directory's lock."""


_HELD: dict[str, list] = {}  # realpath -> [fd, users]: one lock per directory per process


def acquire(path: str) -> str:
    """flock `path/.lock` (the kernel drops it when the holder dies: never a stale lock) and write our pid.
    Within one process a second RunDir on the same directory shares the lock (one user action)."""
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    if fcntl is None:  # pragma: no cover
        _HELD[key] = [None, 1]
        return key
    try:
        fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DiskError(f"run directory '{path}': cannot open its lock file .lock ({reason(e)}); a run "
                        "directory must be writable, even to reuse a finished run") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunInUse(f"run directory '{path}' is in use by pid {pid} (another tinyrlhf process): wait for "
                       "it to finish, stop it, or choose another out_dir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        os.close(fd)
        raise DiskError(f"run directory '{path}': cannot write its lock file .lock ({reason(e)})") from None
    _HELD[key] = [fd, 1]
    return key


def release(key: str):
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        if held[0] is not None:
            os.close(held[0])  # closing the descriptor drops the flock
