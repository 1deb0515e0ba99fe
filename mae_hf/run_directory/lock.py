"""One run per output directory: a lock file that a second run on the same directory meets, on the same node or on
another node of a shared file system.

The lock is a file created with O_EXCL (atomic on local file systems and on NFS v3+, Lustre, GPFS, BeeGFS) holding
the holder's host, pid, process start time, start date and Slurm job; a thread touches it every HEARTBEAT_SECONDS.
A second run is refused, naming the holder. A lock is stale, and taken over with a warning, when its holder is dead:
on this host its pid is gone (or belongs to a newer process); under Slurm it is an earlier incarnation of this very job
(same SLURM_JOB_ID, other SLURM_RESTART_COUNT: a requeued job starts only after the old one ended); on another host its
heartbeat is older than STALE_SECONDS (clocks of the nodes are assumed to agree within seconds, as NTP keeps them).
fcntl/flock locks are not used: several shared file systems do not honour them across nodes.
"""

import json
import logging
import os
import socket
import threading
import time

logger = logging.getLogger("mae_hf")

LOCK_NAME = "_mae_hf_run.lock"  # "_": Trainer.push_to_hub does not upload it (its ignore_patterns hold "_*")
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = float(os.environ.get("MAE_HF_LOCK_STALE_SECONDS", 300))
TAKEOVER_SECONDS = 60.0  # a takeover file older than this belongs to a process that died while taking over


class RunLocked(ValueError):
    """Another live run holds the output directory."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return start is None or _process_start(pid) in (None, start)


def _holder_description(holder: dict, age: float | None) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    beat = f", heartbeat {age:.0f} s ago" if age is not None else ""
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {started}{job}{beat}"


class RunLock:
    """The lock of one output directory (`acquire`, `release`). `folder` is created if needed."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.content: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _mine(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": time.time(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
        }

    def acquire(self) -> None:
        """Take the lock, or raise RunLocked naming the live holder. A stale lock is taken over (logged)."""
        os.makedirs(self.folder, exist_ok=True)
        for _attempt in range(20):
            content = self._mine()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._meet_holder()
                continue
            with os.fdopen(fd, "w") as file:
                json.dump(content, file)
                file.flush()
                os.fsync(file.fileno())
            self.content = content
            self._thread = threading.Thread(target=self._beat, name="mae_hf run lock heartbeat", daemon=True)
            self._thread.start()
            return
        raise RunLocked(f"could not take the lock {self.path}: other runs keep taking it")

    def check(self) -> None:
        """Raise RunLocked when a live run holds the lock (nothing is taken or removed)."""
        holder, age = self._read()
        if holder and self._stale(holder, age) is None:
            raise RunLocked(self._refusal(holder, age))

    def _refusal(self, holder: dict, age: float) -> str:
        return (
            f"--output_dir {self.folder} is in use by another run ({_holder_description(holder, age)}). Two runs in "
            f"one output directory would overwrite each other's checkpoints; wait for it to end or use another "
            f"--output_dir. If that run is dead, delete {self.path}"
        )

    def _read(self) -> tuple[dict | None, float | None]:
        """(the lock's content, seconds since its last heartbeat); (None, None) when it is gone."""
        try:
            with open(self.path) as file:
                text = file.read()
            age = time.time() - os.stat(self.path).st_mtime
        except (FileNotFoundError, NotADirectoryError):  # no lock (or no folder to hold one)
            return None, None
        try:
            return json.loads(text), age
        except ValueError:  # being written (or a writer died before its first byte): judged by its age alone
            return {}, age

    def _stale(self, holder: dict, age: float) -> str | None:
        """Why the holder is dead, or None when it may be alive."""
        if not holder:
            return f"an unreadable lock untouched for {age:.0f} s" if age > TAKEOVER_SECONDS else None
        if holder.get("host") == socket.gethostname():
            if holder.get("pid") == os.getpid() and holder.get("process_start") == _process_start(os.getpid()):
                return "a lock of an earlier run in this process that did not release it"
            if not _alive(holder.get("pid", -1), holder.get("process_start")):
                return "its process is gone"
            return None
        job = holder.get("slurm_job_id")
        if (
            job
            and job == os.environ.get("SLURM_JOB_ID")
            and holder.get("slurm_restart_count") != os.environ.get("SLURM_RESTART_COUNT", "0")
        ):
            return "an earlier incarnation of this Slurm job (requeued)"
        if age > STALE_SECONDS:
            return f"its heartbeat is {age:.0f} s old (stale after {STALE_SECONDS:.0f} s)"
        return None

    def _meet_holder(self) -> None:
        """The lock exists: refuse (RunLocked) when its holder may be alive; remove it when it is stale."""
        holder, age = self._read()
        if holder is None:
            return  # released meanwhile: try again
        reason = self._stale(holder, age)
        if reason is None:
            if not holder:
                time.sleep(0.2)  # a run is writing its lock: read it again
                return
            raise RunLocked(self._refusal(holder, age))
        self._take_over(holder, reason)

    def _take_over(self, holder: dict, reason: str) -> None:
        """Remove the stale lock unless another process is taking it over (an O_EXCL takeover file decides)."""
        takeover = self.path + ".takeover"
        try:
            os.close(os.open(takeover, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            if time.time() - os.stat(takeover).st_mtime > TAKEOVER_SECONDS:
                os.remove(takeover)
            time.sleep(0.2)
            return
        try:
            if self._read()[0] == holder:  # still the dead run's lock, not a live run's newer one
                os.remove(self.path)
                logger.warning(
                    f"taking over the lock of {self.folder} from a run that is no longer alive "
                    f"({_holder_description(holder, None)}): {reason}"
                )
        finally:
            os.remove(takeover)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                logger.error(f"the lock {self.path} of this run was removed by someone else")
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.content is not None and self._read()[0] == self.content:
            os.remove(self.path)
        self.content = None
