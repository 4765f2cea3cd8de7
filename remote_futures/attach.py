"""Attaching to a session whose client died: :meth:`RemoteExecutor.attach`.

The session ledger (:mod:`remote_futures.session`) says which jobs the session submitted and
which calls each task runs. Attaching opens the same transport with the saved options, hands
those jobs to a fresh engine (:meth:`~remote_futures.core.Engine.adopt`) and lets the usual
poll loop do the rest: the scheduler's and accounting's states, the listing of outcome and exit
files, reading the outcomes, explaining tasks that ended without one, and removing each job's
directory once all its calls are collected. Nothing is submitted.

Only transports whose jobs outlive their client can be attached: the batch schedulers. The
``local`` pool's and the ``ssh`` pool's workers are children of the client (they die with it);
the Kubernetes and EC2 transports tie their jobs' lifetime to a live client session.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from .config import ResolvedTarget
from .core import Engine, RemoteFuture
from .errors import ConfigurationError, OutcomeUnavailableError
from .jobs import JobHandle, JobSpec, TaskSpec
from .ledger import Call, Job, Task
from .resources import Resources
from .runtime import Runtime, make_transport
from .session import (
    CallRecord,
    JobRecord,
    SessionRecord,
    SessionRecorder,
    connect,
    ledger_path,
    load_session,
)

__all__ = ["ATTACHABLE", "AttachedSession", "attach_session", "open_session_transport"]

log = logging.getLogger("remote_futures")

#: Seconds an attach waits, when it closes, for released jobs' tasks to end (then their
#: directories are removed; later, pruning does it).
_CLEANUP_WAIT = 20.0

#: Transports whose jobs survive their client, and can be attached.
ATTACHABLE = ("slurm", "pbs", "sge")

_WHY_NOT = {
    "local": "the local pool's worker processes were children of the client and died with it",
    "ssh": "the ssh pool's workers ran over the client's SSH connection and died with it",
    "mock": "the mock transport runs calls in the client's own threads",
}


def find_session(session_id: str) -> tuple[SessionRecord, list[JobRecord], list[CallRecord]]:
    """Read a session from the ledger (a unique prefix of its id is enough)."""
    conn = connect()
    try:
        loaded = load_session(conn, session_id)
    finally:
        conn.close()
    if loaded is None:
        raise ConfigurationError(
            f"no session {session_id!r} (or more than one starting so) in the session ledger "
            f"{ledger_path()}; `remote-futures jobs` lists the sessions"
        )
    return loaded


def open_session_transport(
    session: SessionRecord, overrides: Mapping[str, Any], **forced: Any
) -> Any:
    """The session's transport, built from its saved options (``env`` left out: nothing is
    installed or submitted), ``overrides`` on top; not opened yet."""
    if session.transport not in ATTACHABLE:
        why = _WHY_NOT.get(session.transport, "its jobs do not outlive the client")
        raise ConfigurationError(
            f"session {session.session_id} ran on the {session.transport!r} transport, which "
            f"cannot be attached: {why}. Only {', '.join(ATTACHABLE)} sessions can be attached."
        )
    options = {k: v for k, v in session.options.items() if k != "env"}
    options.update(overrides)
    options.update(forced)
    resolved = ResolvedTarget(
        session.transport, options,
        f"the saved options of session {session.session_id} or the keyword arguments",
    )
    max_workers = session.executor.get("max_workers")
    return make_transport(resolved, max_workers if isinstance(max_workers, int) else None)


def handle_of(job: JobRecord) -> JobHandle:
    """A handle naming a recorded job (no payloads: the job runs already)."""
    spec = JobSpec(
        name=job.name,
        tasks=tuple(TaskSpec(i, b"", tuple(calls)) for i, calls in enumerate(job.tasks)),
        resources=Resources(),
    )
    return JobHandle(job_id=job.job_id, spec=spec, location=job.location)


class AttachedSession:
    """A dead client's session, attached: ``futures`` in submission order.

    A context manager: leaving the block normally waits for every future, then cleans up the
    jobs' directories; leaving it on an exception (or :meth:`close` with ``wait=False``)
    detaches, leaving unfinished jobs running, and fails the futures still pending."""

    def __init__(self, session: SessionRecord, jobs: list[JobRecord],
                 calls: list[CallRecord], overrides: Mapping[str, Any]) -> None:
        self.session_id = session.session_id
        #: The target the session ran on (a transport or profile name).
        self.target = session.target
        transport = open_session_transport(session, overrides)
        #: One future per call of the session, in the order the calls were submitted.
        self.futures: list[RemoteFuture[Any]] = []
        by_call: dict[tuple[str, int], Call] = {}
        for record in calls:
            future: RemoteFuture[Any] = RemoteFuture()
            self.futures.append(future)
            if record.job_name is None or record.call_index is None:
                future.set_exception(OutcomeUnavailableError(
                    f"call {record.seq} of session {self.session_id} was never submitted: "
                    "the client died first"
                ))
                continue
            by_call[(record.job_name, record.call_index)] = Call(
                future, None, index=record.call_index, seq=record.seq
            )
        adopted: list[Job] = []
        for job in jobs:
            calls_of_job = [[by_call.pop((job.name, index), None) for index in task]
                            for task in job.tasks]
            if job.released is not None:
                for call in (c for task in calls_of_job for c in task if c is not None):
                    assert call.future is not None
                    call.future.set_exception(OutcomeUnavailableError(
                        f"call {call.seq} of session {self.session_id} was collected by its "
                        f"client before it died (job {job.job_id}); its outcome is not kept"
                    ))
                continue
            tasks = []
            for position, (indices, members) in enumerate(zip(job.tasks, calls_of_job,
                                                              strict=True)):
                # A call the ledger missed (a write lost at the crash) still gets a future, so
                # that the job is released once every outcome was read.
                members_ = [member if member is not None else Call(RemoteFuture(), None,
                                                                    index=index)
                            for index, member in zip(indices, members, strict=True)]
                tasks.append(Task(position, members_))
            adopted.append(Job(tasks, Resources(), handle=handle_of(job)))
        for call in by_call.values():  # a call whose job the ledger does not have
            assert call.future is not None
            call.future.set_exception(OutcomeUnavailableError(
                f"call {call.seq} of session {self.session_id}: its job is not in the ledger"
            ))
        self.jobs = [job.handle for job in adopted]
        self._runtime: Runtime | None = None
        if not adopted:
            return  # every future is settled: nothing to connect to
        engine = Engine(transport)
        engine.prepare_transport = False
        engine.cancel_on_stop = False
        recorder = SessionRecorder(self.session_id)
        engine.observer = recorder
        self._runtime = Runtime(engine, f"remote_futures-attach-{transport.name}", recorder)
        self._runtime.end_state = "attached"
        self._runtime.portal.call(engine.adopt, adopted)

    def __repr__(self) -> str:
        done = sum(f.done() for f in self.futures)
        return f"<AttachedSession {self.session_id} {done}/{len(self.futures)} done>"

    def __enter__(self) -> AttachedSession:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.close(wait=exc_type is None)

    def close(self, wait: bool = True) -> None:
        """Wait for every future (``wait``) and clean up, or detach at once."""
        if self._runtime is None:
            return
        if not wait:
            self._runtime.end_state = "detached"
            # The futures left fail here, but their calls go on running: the ledger must not
            # record them as failed (a later attach or `jobs` asks the scheduler instead).
            self._runtime.engine.observer = None
        elif not self._runtime.closed:
            try:
                self._runtime.portal.call(self._runtime.engine.wait_idle)
                self._runtime.portal.call(self._finish_cleanup)
            except RuntimeError:
                pass  # the loop already ended
        self._runtime.close(wait_for_work=wait)

    async def _finish_cleanup(self) -> None:
        """The last outcome of a task is read before the task has quite ended (its exit file
        comes after): a released job's directory is removed once its tasks have ended. A
        normal executor leaves the stragglers to pruning; an attach, which exists to clean up
        after a dead client, waits a little for them (polling only released jobs)."""
        assert self._runtime is not None
        engine = self._runtime.engine
        transport = engine.transport
        with anyio.move_on_after(_CLEANUP_WAIT):
            try:
                # Futures are settled before their job is released, in the same poll cycle.
                while engine.active_jobs and engine.broken is None:
                    await anyio.sleep(0.05)
                while getattr(transport, "_finishing", None):
                    await transport.poll([])
                    if getattr(transport, "_finishing", None):
                        await anyio.sleep(0.5)
            except Exception as exc:  # only a clean-up: closing goes on
                log.info("removing the attached jobs' directories failed: %r", exc)


def attach_session(session_id: str, overrides: Mapping[str, Any]) -> AttachedSession:
    """:meth:`RemoteExecutor.attach`: check the session, then attach to it."""
    session, jobs, calls = find_session(session_id)
    alive = session.client_alive()
    if alive:
        raise ConfigurationError(
            f"session {session.session_id} is still running in process {session.pid} on this "
            "machine: attach is for sessions whose client died (two clients collecting the "
            "same results would remove each other's files)"
        )
    return AttachedSession(session, jobs, calls, overrides)

