"""The output folder of one `gloro-train` run: what is in it, and who may write it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import time

from gloro_keras.cli.train_config import ConfigError


class RunDirectory:
    """`model_dir`: the files a run writes, its resume state and its lock.

    A run holds `model_dir/.lock` (pid, host, start time) while it trains; a second run on
    the same folder is refused with a message naming the first, and a lock left by a process
    that no longer runs on this host is taken over. A folder with `model.keras` and no
    `backup/` holds a finished run, which is not overwritten unless `overwrite=True`.

    Example:

    ```python
    run_dir = RunDirectory("runs/c10")
    run_dir.check_start(resume=True, overwrite=False)   # ConfigError if finished or busy
    with run_dir.lock():
        ...  # train; run_dir.resume_epoch is the epoch a resumed run continues after
    ```
    """

    OUTPUTS = ("model.keras", "metrics.csv", "metrics.json")

    def __init__(self, path):
        self.path = str(path)

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def backup_dir(self):
        return self.file("backup")

    @property
    def resume_epoch(self):
        """Epochs a resumable run has finished (from `backup/`), or None."""
        try:
            with open(os.path.join(self.backup_dir, "training_metadata.json")) as f:
                return int(json.load(f)["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def finished(self):
        return os.path.exists(self.file("model.keras")) and self.resume_epoch is None

    def check_start(self, resume=True, overwrite=False):
        """Refuse to start over a finished run (without `overwrite`) or a running one; with
        `overwrite`, remove the earlier run's outputs and backup. Returns the epoch a
        resumed run continues after (None for a fresh run)."""
        self._check_lock()
        if overwrite:
            for name in self.OUTPUTS:
                if os.path.exists(self.file(name)):
                    os.remove(self.file(name))
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            return None
        if self.finished:
            raise ConfigError(f"{self.path} already holds a finished run (model.keras); pass --overwrite "
                              "to replace it, or another --model_dir")
        if not resume and self.resume_epoch is not None:
            raise ConfigError(f"{self.path} holds an interrupted run (backup/) and --noresume was given; "
                              "pass --overwrite to start over, or drop --noresume to continue it")
        return self.resume_epoch if resume else None

    def _holder(self):
        try:
            with open(self.file(".lock")) as f:
                holder = json.load(f)
        except (OSError, ValueError):
            return None
        if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
            return None  # stale: its process is gone
        return holder

    def _check_lock(self):
        holder = self._holder()
        if holder is not None and holder.get("pid") != os.getpid():
            raise ConfigError(f"{self.path} is in use by another gloro-train (pid {holder.get('pid')} on "
                              f"{holder.get('host')}, since {holder.get('started')}); wait for it, or "
                              f"remove {self.file('.lock')} if that run is gone")

    def lock(self):
        """Context manager holding `model_dir/.lock` while a run writes the folder."""
        return _Lock(self)


class _Lock:
    def __init__(self, run_dir):
        self.run_dir = run_dir

    def __enter__(self):
        os.makedirs(self.run_dir.path, exist_ok=True)
        path = self.run_dir.file(".lock")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self.run_dir._check_lock()  # raises unless the lock is stale
                os.remove(path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            return self.run_dir
        raise ConfigError(f"could not take {path}")

    def __exit__(self, *exc):
        try:
            os.remove(self.run_dir.file(".lock"))
        except OSError:
            pass
        return False


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
