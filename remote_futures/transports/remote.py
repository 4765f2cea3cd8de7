"""What every transport that runs jobs through a :class:`~remote_futures.shell.Shell` shares:
connection options, the remote work directory, the uploaded worker, the environment check,
the job-directory upload, one listing of outcome and exit files per poll, and clean-up.

``BatchTransport`` (SLURM, PBS, SGE) and ``SSHHostTransport`` (a plain host) build on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
import posixpath
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .. import worker
from ..errors import ConfigurationError, RemoteEnvironmentError, TransportError
from ..jobs import JobHandle, JobSpec, TaskState, TaskStatus
from ..shell import LocalShell, Shell
from .base import Transport

__all__ = ["Listing", "RemoteOptions", "RemoteTransport"]

log = logging.getLogger("remote_futures")

_OUTCOME = re.compile(r"call-(\d+)\.out$")
_EXIT = re.compile(r"task-(\d+)\.exit:(-?\d+)$")


@dataclasses.dataclass(frozen=True)
class RemoteOptions:
    """Options shared by the ``ssh`` transport and the batch schedulers."""

    #: The host (or an alias from ``~/.ssh/config``). None: run on this machine (a user already
    #: on the cluster's login node); required for ``ssh``.
    host: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    #: A known_hosts file; default: the user's own, checked strictly.
    known_hosts: str | None = None
    #: Turn host-key checking off. Dangerous; never the default.
    insecure_no_host_key_check: bool = False
    ssh_config: str | None = None
    #: The remote interpreter.
    python: str = "python3"
    #: ``"off"``: use ``python`` as it is (it must have cloudpickle and the same major.minor).
    env: Any = "off"
    #: Where job directories live on the remote side; default ``~/.remote_futures``. On a
    #: cluster it must be on a filesystem the compute nodes share (home usually is).
    work_dir: str | None = None
    #: ``"on_release"``: remove a job's directory once its results were read; ``"never"``: keep
    #: it. Either way, directories older than ``keep_days`` are pruned when an executor starts.
    cleanup: Literal["on_release", "never"] = "on_release"
    keep_days: float = 7.0

    @staticmethod
    def convert_env(value: Any) -> Any:
        """``"off"`` (only mode until environment sync lands) is accepted as is."""
        if value != "off":
            raise ConfigurationError(f"env={value!r} is not supported yet; use env='off'")
        return value

    def make_shell(self) -> Shell:
        """A shell on the configured host (SSH), or on this machine when there is no host."""
        if self.host is None:
            return LocalShell()
        from ..ssh import SSHShell  # imported lazily: asyncssh is the optional [ssh] extra

        return SSHShell(
            self.host,
            port=self.port,
            user=self.user,
            identity_file=self.identity_file,
            known_hosts=self.known_hosts,
            insecure_no_host_key_check=self.insecure_no_host_key_check,
            ssh_config=self.ssh_config,
        )


@dataclasses.dataclass(frozen=True)
class Listing:
    """What one ``find``/``grep`` over job directories showed: outcomes and exit codes."""

    outcomes: dict[str, set[int]]
    exits: dict[str, dict[int, int]]


def exit_status(code: int) -> TaskStatus:
    """The state a task's recorded exit code means. A shell reports death by signal N as
    128+N (the job script records ``$?``), so such codes also carry the signal."""
    if code == 0:
        return TaskStatus(TaskState.COMPLETED, exit_code=0)
    signal = code - 128 if 128 < code < 160 else None
    return TaskStatus(TaskState.FAILED, exit_code=code, signal=signal)


class RemoteTransport(Transport):
    """Base of transports whose jobs live in directories reached through a shell."""

    options: RemoteOptions

    def __init__(self, options: RemoteOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.shell = options.make_shell()
        self.work_dir = ""
        self.worker_path = ""
        self.python = options.python

    @property
    def describe(self) -> str:
        """``slurm on user@host:port``."""
        return f"{self.name} on {self.shell.label}"

    async def open(self) -> None:
        """Connect, create the work directory, prune old job directories."""
        await self.shell.open()
        home = await self.shell.home()
        work = self.options.work_dir or "~/.remote_futures"
        if work == "~" or work.startswith("~/"):
            work = posixpath.join(home, work[2:])
        self.work_dir = work
        jobs = self.jobs_dir
        await self.shell.makedirs(jobs)
        minutes = int(self.options.keep_days * 24 * 60)
        # Directories of jobs whose client went away; bounded by age, never by name guessing.
        prune = (
            f"find {shlex.quote(jobs)} -mindepth 1 -maxdepth 1 -type d -name 'rf-*' "
            f"-mmin +{minutes} -exec rm -rf {{}} + 2>/dev/null; true"
        )
        await self.shell.run(prune)

    async def close(self) -> None:
        """Disconnect."""
        await self.shell.close()

    @property
    def jobs_dir(self) -> str:
        """The directory holding one directory per job."""
        return posixpath.join(self.work_dir, "jobs")

    async def prepare(self) -> None:
        """Upload the worker (once per content) and check the remote Python."""
        source = Path(worker.__file__).read_bytes()
        digest = hashlib.sha256(source).hexdigest()[:16]
        self.worker_path = posixpath.join(self.work_dir, f"worker-{digest}.py")
        check = await self.shell.run(f"test -f {shlex.quote(self.worker_path)}")
        if not check.ok:
            await self.shell.write_file(self.worker_path, source, mode=0o600)
        await self._check_python()

    async def _check_python(self) -> None:
        probe = (
            "import sys; print('%d.%d' % sys.version_info[:2]); import cloudpickle; print('ok')"
        )
        result = await self.shell.run(f"{shlex.quote(self.python)} -c {shlex.quote(probe)}")
        lines = result.stdout.split()
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if not lines:
            raise RemoteEnvironmentError(
                f"cannot run the remote Python {self.python!r} on {self.shell.label}: "
                f"{result.stderr.strip() or 'exit ' + str(result.returncode)}"
            )
        if lines[0] != here:
            raise RemoteEnvironmentError(
                f"the remote Python {self.python!r} on {self.shell.label} is {lines[0]} but this "
                f"client runs {here}; cloudpickle payloads need the same major.minor. Point the "
                "'python' option at a matching interpreter."
            )
        if lines[-1] != "ok":
            raise RemoteEnvironmentError(
                f"the remote Python {self.python!r} on {self.shell.label} lacks cloudpickle: "
                f"install it there (pip install --user cloudpickle). {result.stderr.strip()[-300:]}"
            )

    def worker_command(self, job_dir: str) -> str:
        """The worker's command line for one job, without the task option."""
        return " ".join(shlex.quote(part) for part in (self.python, self.worker_path, job_dir))

    async def upload_job(self, job: JobSpec) -> str:
        """Create the job directory (mode 0700) and upload its payloads as one bundle.

        Returns the directory. The bundle is split by the command that starts the job
        (:meth:`unpack_command`), saving a round trip per task."""
        job_dir = posixpath.join(self.jobs_dir, job.name)
        await self.shell.makedirs(job_dir, mode=0o700)
        bundle = pickle.dumps(
            {task.index: task.payload for task in job.tasks}, protocol=worker.ENVELOPE_PROTOCOL
        )
        await self.shell.write_file(posixpath.join(job_dir, worker.BUNDLE_NAME), bundle)
        return job_dir

    def unpack_command(self, job_dir: str) -> str:
        """The command that splits the uploaded bundle into task files."""
        return f"{self.worker_command(job_dir)} --unpack"

    @staticmethod
    def listing_command(job_dirs: Sequence[str]) -> str:
        """One command listing outcome files and exit codes of many job directories."""
        if not job_dirs:
            return "true"
        quoted = " ".join(shlex.quote(d) for d in job_dirs)
        exits = " ".join(f"{shlex.quote(d)}/task-*.exit" for d in job_dirs)
        return (
            f"find {quoted} -maxdepth 1 -name 'call-*.out' 2>/dev/null; "
            f"grep -sH '' {exits}; true"
        )

    @staticmethod
    def parse_listing(text: str) -> Listing:
        """Parse :meth:`listing_command`'s output, keyed by job directory."""
        outcomes: dict[str, set[int]] = {}
        exits: dict[str, dict[int, int]] = {}
        for line in text.splitlines():
            line = line.strip()
            match = _OUTCOME.search(line)
            if match:
                outcomes.setdefault(posixpath.dirname(line), set()).add(int(match.group(1)))
                continue
            match = _EXIT.search(line)
            if match:
                directory = posixpath.dirname(line.rsplit(":", 1)[0])
                exits.setdefault(directory, {})[int(match.group(1))] = int(match.group(2))
        return Listing(outcomes, exits)

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """Read the outcome files (concurrently over SFTP on SSH)."""
        paths = {
            posixpath.join(handle.location, worker.OUTCOME_NAME.format(call)): (handle, call)
            for handle, calls in wanted.items()
            for call in calls
        }
        found = await self.shell.read_files(list(paths))
        result: dict[JobHandle, dict[int, bytes]] = {handle: {} for handle in wanted}
        for path, data in found.items():
            handle, call = paths[path]
            result[handle][call] = data
        return result

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """The tail of the task's stderr file and of the scheduler's own log for it."""
        files = [posixpath.join(job.location, worker.STDERR_NAME.format(task))]
        files += self.extra_log_files(job, task)
        command = "; ".join(
            f"tail -n {lines} {shlex.quote(f)} 2>/dev/null" for f in files
        )
        result = await self.shell.run(command)
        return result.stdout

    def extra_log_files(self, job: JobHandle, task: int) -> list[str]:
        """Other files worth showing in an error (the scheduler's log); none by default."""
        return []

    async def release(self, job: JobHandle) -> None:
        """Remove the job directory, per the ``cleanup`` option."""
        if self.options.cleanup == "on_release":
            result = await self.shell.run(f"rm -rf {shlex.quote(job.location)}")
            if not result.ok:
                raise TransportError(f"could not remove {job.location}: {result.stderr.strip()}")
