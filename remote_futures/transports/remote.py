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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .. import worker
from ..envsync import EnvSpec, SyncResult, env_spec_from_option, sync_environment
from ..errors import ConfigurationError, TransportError
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from ..output import LineSplitter
from ..shell import CommandResult, LocalShell, Shell
from ._tails import TailTarget, split_tails, tail_command
from .base import Transport

__all__ = [
    "UNCOLLECTED",
    "Listing",
    "PollOutput",
    "RemoteOptions",
    "RemoteTransport",
    "check_work_dir",
    "prune_command",
    "remove_ended_command",
    "resolve_work_dir",
    "split_poll_output",
    "work_dir_check_command",
]

log = logging.getLogger("remote_futures")

_OUTCOME = re.compile(r"call-(\d+)\.out$")
_OUTPUT = re.compile(r"task-(\d+)\.(stdout|stderr)$")
_STARTED = re.compile(r"task-(\d+)\.started$")
_EXIT = re.compile(r"task-(\d+)\.exit:(-?\d+)$")
#: A file in a job directory whose outcomes no client has collected yet: created with the job,
#: gone with the directory (or removed at release with ``cleanup="never"``). Pruning keeps such
#: directories: a session whose client died can still be attached (``remote-futures clean
#: --uncollected`` removes them).
UNCOLLECTED = "uncollected"
#: Separates a poll's status output from its listing of job directories.
_MARK = "@@remote_futures-listing@@"
#: Precedes the status command's exit status (its stderr follows) in a poll's output.
_RC = "@@rc="


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
    #: ``"sync"`` (default): mirror this interpreter's packages into a cached remote venv with
    #: uv; ``"off"``: use ``python`` as it is (it needs cloudpickle and the same major.minor); a
    #: list of requirements or a requirements file: install exactly that (plus cloudpickle); or
    #: an :class:`~remote_futures.envsync.EnvSpec` (a table in a profile) for excludes, extras,
    #: ``find_links``, ``index_url``...
    env: Any = dataclasses.field(default_factory=lambda: env_spec_from_option("sync"))
    #: Where job directories live on the remote side; default ``~/.remote_futures``. On a
    #: cluster it must be on a filesystem the compute nodes share (home usually is).
    work_dir: str | None = None
    #: ``"on_release"``: remove a job's directory once its results were read; ``"never"``: keep
    #: it. Either way, directories older than ``keep_days`` are pruned when an executor starts.
    cleanup: Literal["on_release", "never"] = "on_release"
    keep_days: float = 7.0
    #: Copy what each task printed to this process's stdout/stderr once the task ends, as
    #: ProcessPoolExecutor's children print to the terminal.
    forward_output: bool = True

    @staticmethod
    def convert_env(value: Any) -> EnvSpec:
        """Parse ``env`` now, so that a bad value fails at construction."""
        if isinstance(value, dict):
            table = dict(value)
            what = table.pop("requirements", None) or table.pop("mode", "sync")
            try:
                return env_spec_from_option(what, **table)
            except TypeError as exc:
                raise ConfigurationError(f"bad env table {value!r}: {exc}") from None
        return env_spec_from_option(value)

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


class _Forwarded:
    """What of one job's output was forwarded: calls whose outcomes were listed (their output
    was forwarded before them), and bytes forwarded per (task, stream)."""

    def __init__(self, handle: JobHandle) -> None:
        self.task_of = {call: position for position, task in enumerate(handle.spec.tasks)
                        for call in task.call_indices}
        self.calls: set[int] = set()
        self.offsets: dict[tuple[int, str], int] = {}
        #: The unfinished last line read of each (task, stream), held until it is finished
        #: or the task ends.
        self.splitters: dict[tuple[int, str], LineSplitter] = {}
        #: Tasks last seen running: their output files are read at each poll (live output).
        self.running: set[int] = set()


@dataclasses.dataclass(frozen=True)
class Listing:
    """What one ``find``/``grep`` over job directories showed: outcomes and exit codes."""

    outcomes: dict[str, set[int]]
    exits: dict[str, dict[int, int]]
    #: Non-empty output files: directory -> {(task, "stdout" | "stderr")}.
    outputs: dict[str, set[tuple[int, str]]] = dataclasses.field(default_factory=dict)
    #: Tasks whose job script has started: directory -> {task}.
    started: dict[str, set[int]] = dataclasses.field(default_factory=dict)


#: Directories under the work directory whose contents are run or unpickled: each must be the
#: user's own and writable by nobody else, like the work directory itself.
_TRUSTED_SUBDIRS = ("jobs", "envs", "bin", worker.CODE_DIR)
_UID_LINE = "@@rf-uid "
_DIR_LINE = "@@rf-dir "


def work_dir_check_command(work_dir: str) -> str:
    """Create ``work_dir`` if missing (every level created 0700), and its ``jobs`` directory
    (0700) only if ``work_dir`` is the user's and nobody else may write to it; then describe
    it and the directories in it that hold trusted files: the user id, ``ls -ldnL`` of each.
    :func:`check_work_dir` judges the description."""
    quoted = shlex.quote(work_dir)
    jobs = shlex.quote(posixpath.join(work_dir, "jobs"))
    names = " ".join(shlex.quote(name) for name in (".", *_TRUSTED_SUBDIRS))
    return (
        f"umask 077 && mkdir -p {quoted} && "
        f"if [ -O {quoted} ] && [ -z \"$(find {quoted} -prune \\( -perm -020 -o -perm -002 "
        f"\\) 2>&1)\" ]; then mkdir -p {jobs} && chmod 700 {jobs}; fi; "
        f"printf '{_UID_LINE}%s\\n' \"$(id -u)\"; "
        f"for n in {names}; do d={quoted}/\"$n\"; if [ -e \"$d\" ] || [ -L \"$d\" ]; then "
        f"printf '{_DIR_LINE}%s ' \"$n\"; ls -ldnL -- \"$d\" 2>&1 || echo '?'; fi; done"
    )


def check_work_dir(
    text: str, work_dir: str, label: str, result: CommandResult | None = None
) -> None:
    """Raise :class:`ConfigurationError` unless :func:`work_dir_check_command`'s output shows
    ``work_dir`` (and each trusted directory in it) owned by the user and not writable by the
    group or others.

    Anyone who can write there could plant a worker or a venv that jobs run, or results that
    this process unpickles: a work directory in shared scratch that someone else created
    first, or one left group-writable by a umask, is refused rather than trusted."""
    uid: str | None = None
    seen: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(_UID_LINE):
            uid = line[len(_UID_LINE):].strip()
        elif line.startswith(_DIR_LINE):
            name, _, listing = line[len(_DIR_LINE):].partition(" ")
            seen[name] = listing.split()
    if uid is None or "." not in seen:
        said = (result.stderr.strip() or result.stdout.strip()) if result else text.strip()
        raise ConfigurationError(f"cannot create or inspect the work directory {work_dir} on "
                                 f"{label}: {said[-1000:]}")
    for name, fields in seen.items():
        path = work_dir if name == "." else posixpath.join(work_dir, name)
        if len(fields) < 4 or len(fields[0]) < 10:
            raise ConfigurationError(f"cannot inspect {path} on {label}: {' '.join(fields)}")
        mode, owner = fields[0], fields[2]
        problem = ""
        if mode[0] != "d":
            problem = "is not a directory"
        elif owner != uid:
            problem = f"belongs to user id {owner}, not to this user (id {uid})"
        elif mode[5] == "w" or mode[8] == "w":
            who = " and ".join(w for w, c in (("its group", mode[5]), ("everyone", mode[8]))
                               if c == "w")
            problem = f"is writable by {who} (mode {mode[:10]})"
        if problem:
            fix = (
                f", or, if the directory is yours and holds nothing foreign, run "
                f"`chmod go-w {shlex.quote(path)}` there" if owner == uid and mode[0] == "d"
                else ""
            )
            raise ConfigurationError(
                f"refusing to use the work directory {work_dir} on {label}: {path} {problem}. "
                "Whoever can write there could plant code that jobs run or results this "
                "process unpickles. Pick a work_dir of your own (the default is "
                f"~/.remote_futures){fix}."
            )
    if "jobs" not in seen:
        raise ConfigurationError(f"could not create {posixpath.join(work_dir, 'jobs')} on "
                                 f"{label}")


def exit_status(code: int) -> TaskStatus:
    """The state a task's recorded exit code means. A shell reports death by signal N as
    128+N (the job script records ``$?``), so such codes also carry the signal."""
    if code == 0:
        return TaskStatus(TaskState.COMPLETED, exit_code=0)
    signal = code - 128 if 128 < code < 160 else None
    return TaskStatus(TaskState.FAILED, exit_code=code, signal=signal)


@dataclasses.dataclass(frozen=True)
class PollOutput:
    """The parts of :meth:`RemoteTransport.status_and_listing_command`'s output."""

    status: str
    #: The status command's exit status; None when the output was cut short (no answer).
    returncode: int | None
    stderr: str
    listing: str


def split_poll_output(text: str) -> PollOutput:
    """Take apart the output of :meth:`RemoteTransport.status_and_listing_command`."""
    head, _, listing = text.partition(_MARK)
    status, found, rest = head.rpartition(_RC)
    if not found:
        return PollOutput(head, None, "", listing)
    code, _, stderr = rest.partition("\n")
    try:
        returncode: int | None = int(code.strip())
    except ValueError:
        returncode = None
    return PollOutput(status, returncode, stderr.strip(), listing)


def resolve_work_dir(option: str | None, home: str) -> str:
    """The absolute work directory: ``~`` and relative paths are taken from the remote home
    (job scripts run in other directories, so a relative path would point elsewhere)."""
    work = option or "~/.remote_futures"
    if work == "~" or work.startswith("~/"):
        work = posixpath.join(home, work[2:])
    elif not posixpath.isabs(work):
        work = posixpath.join(home, work)
    return posixpath.normpath(work)


def prune_command(jobs_dir: str, keep_days: float) -> str:
    """Remove job directories older than ``keep_days`` whose every task has ended (an exit
    file, or a cancel marker) and whose outcomes were collected (no :data:`UNCOLLECTED`
    marker: the client of such a job died, and attaching to its session needs them). A
    directory's age says nothing about its job: a job may pend or run for weeks with its
    directory untouched, so age alone never deletes one."""
    minutes = int(keep_days * 24 * 60)
    script = 'for d in "$@"; do [ -e "$d/' + UNCOLLECTED + '" ] || set -- "$@" "$d"; ' \
        'shift; done; ' + _REMOVE_ENDED
    return (
        f"find {shlex.quote(jobs_dir)} -mindepth 1 -maxdepth 1 -type d -name 'rf-*' "
        f"-mmin +{minutes} -exec sh -c {shlex.quote(script)} sh {{}} + 2>/dev/null; true"
    )


def remove_ended_command(job_dirs: Sequence[str]) -> str:
    """Remove those of ``job_dirs`` whose every task has an exit file or a cancel marker."""
    quoted = " ".join(shlex.quote(d) for d in job_dirs)
    return f"sh -c {shlex.quote(_REMOVE_ENDED)} sh {quoted} 2>/dev/null; true"


#: ``sh -c`` script: remove each directory argument whose every task (``task-<i>.in``) has
#: ended: an exit file, or a cancel marker.
_REMOVE_ENDED = (
    'for d in "$@"; do ended=1; '
    'for f in "$d"/task-*.in; do [ -e "$f" ] || continue; t=${f%.in}; '
    '[ -e "$t.exit" ] || [ -e "$t.cancel" ] || { ended=0; break; }; done; '
    '[ "$ended" = 1 ] && rm -rf "$d"; done; true'
)


class RemoteTransport(Transport):
    """Base of transports whose jobs live in directories reached through a shell."""

    options: RemoteOptions

    def __init__(self, options: RemoteOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.shell = options.make_shell()
        self.work_dir = ""
        self.worker_path = ""
        self.python = options.python
        #: What environment sync did in ``prepare()`` (None before it ran).
        self.sync_result: SyncResult | None = None
        self._uploaded_code: set[str] = set()
        #: Per job, what of its tasks' output was forwarded already (see :meth:`report`).
        self._output: dict[JobHandle, _Forwarded] = {}

    @property
    def describe(self) -> str:
        """``slurm on user@host:port``."""
        return f"{self.name} on {self.shell.label}"

    async def open(self) -> None:
        """Connect, create the work directory (0700) and check that only we can write to it,
        create the jobs directory, prune old job directories."""
        await self.shell.open()
        home = await self.shell.home()
        self.work_dir = resolve_work_dir(self.options.work_dir, home)
        checked = await self.shell.run(work_dir_check_command(self.work_dir))
        check_work_dir(checked.stdout, self.work_dir, self.shell.label, checked)
        jobs = self.jobs_dir  # created by the check, once the work directory passed it
        # Directories of jobs whose client went away, once all their tasks have ended.
        await self.shell.run(prune_command(jobs, self.options.keep_days))

    async def close(self) -> None:
        """Disconnect."""
        await self.shell.close()

    @property
    def jobs_dir(self) -> str:
        """The directory holding one directory per job."""
        return posixpath.join(self.work_dir, "jobs")

    async def prepare(self) -> None:
        """Upload the worker (once per content), then sync (or, with ``env="off"``, check)
        the remote environment: both before anything is submitted."""
        source = Path(worker.__file__).read_bytes()
        digest = hashlib.sha256(source).hexdigest()[:16]
        self.worker_path = posixpath.join(self.work_dir, f"worker-{digest}.py")
        # The file's name is predictable: its content is what is trusted, byte for byte (it is
        # small, so reading it back costs what `test -f` did: one round trip).
        found = await self.shell.read_files([self.worker_path])
        present = found.get(self.worker_path)
        if present != source:
            if present is not None:
                log.warning("%s: %s did not hold this version's worker; replaced it",
                            self.describe, self.worker_path)
            await self.shell.write_file(self.worker_path, source, mode=0o600)
        result = await sync_environment(
            self.shell, python=self.options.python, work_dir=self.work_dir, spec=self.options.env
        )
        self.python = result.python
        self.sync_result = result
        if result.venv_dir:
            log.info("%s: remote environment %s (%s; %d round trip(s))", self.describe,
                     result.venv_dir, "cached" if result.cached else
                     f"installed {len(result.installed)}", result.round_trips)

    def worker_command(self, job_dir: str) -> str:
        """The worker's command line for one job, without the task option."""
        return " ".join(shlex.quote(part) for part in (self.python, self.worker_path, job_dir))

    async def upload_code(self, job: JobSpec) -> None:
        """Upload the caller's code bundle of ``job`` into the work dir's code directory,
        once per content (its name is its hash), where the worker puts it on ``sys.path``."""
        if job.code is not None and job.code.name not in self._uploaded_code:
            code_dir = posixpath.join(self.work_dir, worker.CODE_DIR)
            await self.shell.makedirs(code_dir)
            await self.shell.write_file(posixpath.join(code_dir, job.code.name), job.code.data)
            self._uploaded_code.add(job.code.name)

    async def upload_job(self, job: JobSpec) -> str:
        """Create the job directory (mode 0700) and upload its payloads as one bundle.

        Returns the directory. The bundle is split by the command that starts the job
        (:meth:`unpack_command`), saving a round trip per task."""
        job_dir = posixpath.join(self.jobs_dir, job.name)
        await self.shell.makedirs(job_dir, mode=0o700)
        await self.upload_code(job)
        bundle = pickle.dumps(
            {task.index: task.payload for task in job.tasks}, protocol=worker.ENVELOPE_PROTOCOL
        )
        await self.shell.write_file(posixpath.join(job_dir, worker.BUNDLE_NAME), bundle)
        return job_dir

    def unpack_command(self, job_dir: str) -> str:
        """The command that marks the job uncollected and splits the uploaded bundle into
        task files."""
        marker = shlex.quote(posixpath.join(job_dir, UNCOLLECTED))
        return f"touch {marker} && {self.worker_command(job_dir)} --unpack"

    @staticmethod
    def listing_command(job_dirs: Sequence[str]) -> str:
        """One command listing exit codes, then outcome files, of many job directories.

        Exit files come first: a task writes its outcomes before its exit file, so every
        outcome of a task whose exit file is listed is listed too (the other order misses
        outcomes written between the two reads). ``find -exec ... +`` keeps the command
        line short however many tasks a job has."""
        if not job_dirs:
            return "true"
        quoted = " ".join(shlex.quote(d) for d in job_dirs)
        return (
            f"find {quoted} -maxdepth 1 -name 'task-*.exit' -exec grep -sH '' {{}} + "
            f"2>/dev/null; "
            f"find {quoted} -maxdepth 1 \\( -name 'call-*.out' -o -name 'task-*.started'"
            f" -o -name 'task-*.std*' -size +0 \\) 2>/dev/null; true"
        )

    @staticmethod
    def status_and_listing_command(status_command: str, job_dirs: Sequence[str]) -> str:
        """A status command and the listing of ``job_dirs``, as one command whose output
        :func:`split_poll_output` takes apart: the status command's stdout, its exit status
        and stderr (a failed status command must read as "unknown", not as "no jobs"), then
        the listing."""
        capture = (
            f"rf_err=$( {{ {status_command}; rf_rc=$?; echo; echo \"{_RC}$rf_rc\"; }} "
            f"2>&1 1>&3 3>&- )"
        )
        return (
            f"{{ {capture}; printf '%s\\n' \"$rf_err\"; }} 3>&1; echo {_MARK}; "
            f"{RemoteTransport.listing_command(job_dirs)}"
        )

    @staticmethod
    def parse_listing(text: str) -> Listing:
        """Parse :meth:`listing_command`'s output, keyed by job directory."""
        outcomes: dict[str, set[int]] = {}
        exits: dict[str, dict[int, int]] = {}
        outputs: dict[str, set[tuple[int, str]]] = {}
        started: dict[str, set[int]] = {}
        for line in text.splitlines():
            line = line.strip()
            match = _OUTCOME.search(line)
            if match:
                outcomes.setdefault(posixpath.dirname(line), set()).add(int(match.group(1)))
                continue
            match = _STARTED.search(line)
            if match:
                started.setdefault(posixpath.dirname(line), set()).add(int(match.group(1)))
                continue
            match = _OUTPUT.search(line)
            if match:
                outputs.setdefault(posixpath.dirname(line), set()).add(
                    (int(match.group(1)), match.group(2))
                )
                continue
            match = _EXIT.search(line)
            if match:
                directory = posixpath.dirname(line.rsplit(":", 1)[0])
                exits.setdefault(directory, {})[int(match.group(1))] = int(match.group(2))
        return Listing(outcomes, exits, outputs, started)

    async def report(
        self,
        tasks: Mapping[JobHandle, Mapping[int, TaskStatus]],
        ended: Mapping[JobHandle, set[int]],
        listing: Listing,
    ) -> dict[JobHandle, JobStatus]:
        """What every poll ends with: each job's status with its ready outcomes, and the
        tasks' output forwarded. ``ended`` holds, per job, the tasks already seen terminal; it
        is updated.

        A call settles as soon as its outcome is listed, which is often before its task's exit
        file (the worker writes the outcome, then exits, then the script writes the exit
        code). So the output of a task with newly listed outcomes is forwarded now, before the
        core can set those results (the worker flushes its streams before writing each
        outcome): a caller that prints after ``result()`` returns sees what the call printed.
        What a task prints later is forwarded when it ends."""
        statuses: dict[JobHandle, JobStatus] = {}
        forward: dict[JobHandle, set[int]] = {}
        final: dict[JobHandle, set[int]] = {}
        for handle, states in tasks.items():
            seen = ended[handle]
            ready = listing.outcomes.get(handle.location, set())
            for task, status in states.items():
                if status.state.terminal and task not in seen:
                    seen.add(task)
                    final.setdefault(handle, set()).add(task)
                    forward.setdefault(handle, set()).add(task)
            if self.options.forward_output:
                done = self._output.setdefault(handle, _Forwarded(handle))
                for task, status in states.items():  # a task left out keeps its state
                    if status.state is TaskState.RUNNING and task not in seen:
                        done.running.add(task)
                    else:
                        done.running.discard(task)
                for call in ready - done.calls:
                    owner = done.task_of.get(call)
                    if owner is not None and owner not in seen:
                        forward.setdefault(handle, set()).add(owner)
                done.calls |= ready
            statuses[handle] = JobStatus(dict(states), frozenset(ready))
        if forward:
            await self.forward_output(forward, listing, final)
        return statuses

    async def forward_output(
        self,
        tasks: Mapping[JobHandle, set[int]],
        listing: Listing,
        final: Mapping[JobHandle, set[int]] | None = None,
    ) -> None:
        """Copy what ``tasks`` printed since the last time to this process's stdout and
        stderr. Tasks in ``final`` have ended: nothing more will come from them."""
        if not (self.options.forward_output and self.output.enabled):
            return
        wanted = {
            posixpath.join(handle.location, f"task-{task}.{kind}"): (handle, task, kind)
            for handle, some in tasks.items()
            for task, kind in sorted(listing.outputs.get(handle.location, ()))
            if task in some
        }
        found = await self.shell.read_files(list(wanted)) if wanted else {}
        for path, (handle, task, kind) in wanted.items():
            if path not in found:
                continue
            done = self._output.setdefault(handle, _Forwarded(handle))
            offset = done.offsets.get((task, kind), 0)
            data = found[path][offset:]
            done.offsets[(task, kind)] = offset + len(data)
            # A task whose every outcome is listed printed all it will (the worker flushes
            # before writing an outcome): its unfinished line goes out before the results
            # (the job may be released before its end is seen).
            calls = handle.spec.tasks[task].call_indices if task < len(handle.spec.tasks) else ()
            self._emit(handle, done, task, kind, data,
                       ended=task in (final or {}).get(handle, ())
                       or (bool(calls) and done.calls.issuperset(calls)))
        for handle, some in (final or {}).items():
            record = self._output.get(handle)
            if record is not None:
                for task in some:
                    for kind in ("stdout", "stderr"):
                        splitter = record.splitters.pop((task, kind), None)
                        if splitter is not None:  # an unfinished line, its file not listed
                            self._emit(handle, record, task, kind, splitter.rest(), ended=True)
                        record.offsets.pop((task, kind), None)
                    record.running.discard(task)

    def _emit(
        self, handle: JobHandle, done: _Forwarded, task: int, kind: str, data: bytes,
        *, ended: bool,
    ) -> None:
        """Forward the whole lines ``data`` completes (all of it once the task ``ended``),
        tagged with the task's calls."""
        if self.output.live or ended:
            splitter = done.splitters.get((task, kind))
            if splitter is None:
                splitter = done.splitters[(task, kind)] = LineSplitter()
            data = splitter.feed(data)
            if ended:
                data += splitter.rest()
                done.splitters.pop((task, kind), None)
        if not data:
            return
        calls = handle.spec.tasks[task].call_indices if task < len(handle.spec.tasks) else ()
        # A task running several calls (a map's chunk) prints for all of them.
        call: int | str | None = (
            calls[0] if len(calls) == 1 else f"{calls[0]}-{calls[-1]}" if calls else None
        )
        self.output.forward(1 if kind == "stdout" else 2, handle.job_id, call, data)

    def live_tails(self, jobs: Sequence[JobHandle]) -> list[tuple[JobHandle, int, str, int]]:
        """The output files to read in this poll (live output): those of the tasks last seen
        running, from what was read of them so far, as (job, task, stream, offset)."""
        if not (self.output.live and self.options.forward_output):
            return []
        found = []
        for handle in jobs:
            done = self._output.get(handle)
            if done is None:
                continue
            for task in sorted(done.running):
                for kind in ("stdout", "stderr"):
                    found.append((handle, task, kind, done.offsets.get((task, kind), 0)))
        return found

    def tail_command(self, tails: Sequence[tuple[JobHandle, int, str, int]]) -> str:
        """The command reading ``tails`` (:meth:`live_tails`), to follow the poll's listing
        in the same remote command ("" if none)."""
        return tail_command([
            TailTarget(posixpath.join(handle.location, f"task-{task}.{kind}"), offset)
            for handle, task, kind, offset in tails
        ])

    def take_tails(
        self, tails: Sequence[tuple[JobHandle, int, str, int]], listing: str
    ) -> str:
        """Forward the whole lines read by :meth:`tail_command` (the rest is kept for the
        next poll, or the task's end); return the listing without them."""
        if not tails:
            return listing
        listing, read = split_tails(listing)
        for position, data in read.items():
            if position >= len(tails) or not data:
                continue
            handle, task, kind, offset = tails[position]
            done = self._output.get(handle)
            if done is None or done.offsets.get((task, kind), 0) != offset:
                continue  # forwarded meanwhile (the task ended): do not print it twice
            done.offsets[(task, kind)] = offset + len(data)
            self._emit(handle, done, task, kind, data, ended=False)
        return listing

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
        self._output.pop(job, None)
        if self.options.cleanup == "on_release":
            result = await self.shell.run(f"rm -rf {shlex.quote(job.location)}")
            if not result.ok:
                raise TransportError(f"could not remove {job.location}: {result.stderr.strip()}")
        else:
            # Kept, but collected: pruning may remove it once it is old.
            await self.shell.run(f"rm -f {shlex.quote(posixpath.join(job.location, UNCOLLECTED))}")
