"""One trainer per workdir: an exclusive lock, released by the kernel when the holder dies.

Two trainers writing one run would interleave checkpoints and metrics. The lock file
(WORKDIR/.lock.process<i>, per process of a multi-process job) is flock'ed for the trainer's
lifetime and records who holds it, so a second trainer exits at once naming the holder. A
killed holder leaves no stale lock: flock ends with the process. (flock needs a filesystem that
supports it; local disks and NFSv4 do.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class WorkdirBusyError(RuntimeError):
  pass


class WorkdirLock:
  def __init__(self, workdir: str | os.PathLike, process_index: int = 0):
    self.path = Path(workdir) / f".lock.process{process_index}"
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "(unknown holder)"
      os.close(fd)
      raise WorkdirBusyError(
        f"workdir {self.path.parent} is in use by another trainer: {holder}. Wait for it to finish, "
        "stop it, or use another --workdir"
      ) from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
