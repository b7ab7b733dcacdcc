"""One process per run directory: the lock file ``run_dir/.lock`` (chapter ``ch-capstone``).

A run, a resume and an overwrite take the lock before they write anything in the directory and hold it
until they end; a second process asking for it is refused with :class:`RunInUseError` (one line that
names the process holding it). The lock is an exclusive ``flock`` on the file, which the operating
system releases when the process dies however it dies, so a lock file left by a killed process is
stale by construction: the next run takes it over and says so. The file records the holder's PID, host
and start time for those messages. (Where ``fcntl`` is missing, a lock file whose PID is no longer
running on this host is taken as stale instead.)
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path

from kltutor.capstone.config import CapstoneUserError, flag

try:
    import fcntl
except ImportError:  # not POSIX: fall back on the PID recorded in the file
    fcntl = None

__all__ = ["LOCK_FILE", "RunInUseError", "RunLock", "check_not_in_use"]

LOCK_FILE = ".lock"


class RunInUseError(CapstoneUserError):
    """Another process holds the run directory's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # it exists (owned by someone else), or we cannot tell
        return True
    return True


def _describe(holder: dict) -> str:
    pid, host, since = holder.get("pid", "?"), holder.get("host", "?"), holder.get("started", "?")
    return f"process {pid} on {host}, since {since}"


def check_not_in_use(run_dir: Path) -> None:
    """Raise :class:`RunInUseError` if a live process holds ``run_dir``'s lock; writes nothing (the
    checks of a run call it first, so that a directory in use is refused before anything else is said
    about it)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or one we cannot open: the lock itself will say)
        return
    try:
        lock = RunLock(run_dir)
        holder = lock._read(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise lock._refuse(holder) from None
        elif holder.get("host") == socket.gethostname() and _pid_alive(int(holder.get("pid", -1))):
            raise lock._refuse(holder)
    finally:
        os.close(fd)  # releases the shared lock taken to look


class RunLock:
    """The lock of ``run_dir`` (``with RunLock(run_dir) as lock: ...``).

    :meth:`acquire` creates the directory if needed (and :meth:`release` removes what it created, if it
    is empty then), takes the lock or raises :class:`RunInUseError`; :attr:`notes` says when a stale
    lock was taken over. ``run_dir=None`` (a new temporary directory) locks nothing.
    """

    def __init__(self, run_dir: Path | None):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.path = None if run_dir is None else self.run_dir / LOCK_FILE
        self.notes: list[str] = []
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self, holder: dict) -> RunInUseError:
        return RunInUseError(
            f"{self.run_dir} is in use by another run ({_describe(holder)}; lock file {self.path}); wait for it "
            f"to end or stop it, or pass another {flag('run_dir')}",
            "run_dir",
        )

    def _read(self, fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = json.loads(os.read(fd, 4096).decode() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        if self.path is None or self._fd is not None:
            return
        top = self.run_dir
        while not top.exists():
            self._created.insert(0, top)
            top = top.parent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd, locked = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), False
            try:
                if fcntl is not None:
                    for attempt in range(5):  # a check_not_in_use elsewhere holds a shared lock for a moment
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            if attempt == 4:
                                raise self._refuse(self._read(fd)) from None
                            time.sleep(0.02)
                    # the holder may have removed the file between our open and our flock: lock the file
                    # that is there now
                    try:
                        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                    except FileNotFoundError:
                        same = False
                    if not same:
                        os.close(fd)
                        continue
                old = self._read(fd)
                if old and old.get("pid") != os.getpid():
                    pid = old.get("pid")
                    alive = isinstance(pid, int) and old.get("host") == socket.gethostname() and _pid_alive(pid)
                    if fcntl is None and alive:
                        raise self._refuse(old)
                    self.notes.append(
                        f"took over the stale lock {self.path} left by {_describe(old)} (it no longer holds it)"
                    )
                locked = True  # ours from here (with fcntl: since the flock)
                record = {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "argv": sys.argv,
                }
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(record).encode())
            except BaseException as e:
                if locked:  # a lock file we could not write (a full disk): not left behind
                    self.path.unlink(missing_ok=True)
                os.close(fd)
                if isinstance(e, OSError) and e.filename is None:
                    e.filename = str(self.path)
                self._remove_created()
                raise
            self._fd = fd
            return

    def release(self) -> None:
        """Remove the lock file (still holding the lock, so nobody else is locking it) and unlock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
            self._remove_created()

    def _remove_created(self) -> None:
        for d in reversed(self._created):  # deepest first; only directories left empty
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []
