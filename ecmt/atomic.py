"""Write files so that a failure never leaves a half-written output behind.

The temporary file lies next to the target (a rename is atomic only within
one file system) and is named ``.NAME.HOST-PID.XXXXXXXX.part`` after its
writer.  A run killed before its rename leaves it behind; the next write of
the same target removes it once its writer is gone: a dead pid on this host,
or no write for STALE_SECONDS from another host's writer (a shared folder).
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from .errors import EcmtError

STALE_SECONDS = 15 * 60


def host_tag() -> str:
    """This host's name as temporary file names carry it."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by someone else
        return True
    return True


def remove_stale_parts(path: Path) -> list[Path]:
    """Delete leftover temporary files of `path` whose writer is gone; return them."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"([A-Za-z0-9_]+)-(\d{1,7})\.[A-Za-z0-9_]{8}\.part")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    host, now = host_tag(), time.time()
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        # A live writer on this host keeps its file however long its work takes.
        if (not _alive(int(m[2])) if m[1] == host else age > STALE_SECONDS):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def check_writable(path, *, folder: bool = False) -> None:
    """Refuse an output that cannot be written, before any work is done: a file target
    that is a folder (or a folder target that is a file), a read-only file, or a place
    where nothing can be created.  The last is checked with a real write probe in the
    nearest existing folder, since permission bits do not bind root and a read-only
    file system is not in them."""
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise EcmtError(f"{path}: is a file, not a folder to write into", hint="name a folder")
    else:
        if str(path).endswith(os.sep) or path.is_dir():
            raise EcmtError(f"{path}: is a directory, not a file to write", hint="name the output file")
        if path.exists() and not os.access(path, os.W_OK):
            raise EcmtError(f"{path}: is read-only; ecmt does not replace it", hint="remove it or pick another name")
    start = path if folder else path.parent
    parent = next((p for p in (start, *start.parents) if p.exists()), None)
    if parent is None:
        return
    if not parent.is_dir():
        raise EcmtError(f"{path}: {parent} is a file, not a folder", hint="pick another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EcmtError(f"{path}: cannot write in {parent} (permission denied)", hint="pick another folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ecmt-write-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise EcmtError(f"{path}: cannot create a file in {parent} ({err.strerror or err})",
                        hint="pick another folder") from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is renamed to
    `path` (with the usual permissions), on any error it is deleted."""
    check_writable(path)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{host_tag()}-{os.getpid()}.", suffix=".part",
                                   dir=path.parent)
    except OSError as err:
        raise EcmtError(f"{path}: cannot write ({err.strerror or err})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
