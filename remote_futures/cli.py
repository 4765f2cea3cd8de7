"""The ``remote-futures`` command line (also ``python -m remote_futures``).

Subcommands are registered in :data:`COMMANDS` (name -> a function adding its parser), so that
more can be added without touching the others. Today: ``check TARGET [--option value ...]``
(can this target run calls? see :mod:`remote_futures.check`), ``sweep ec2`` and
``sweep kubernetes``, which remove what executor sessions that died left behind, and ``jobs``,
``logs``, ``cancel`` and ``clean`` (see :mod:`remote_futures.session_cli`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence

import anyio

from .errors import RemoteFuturesError
from .terminal import colour_enabled

__all__ = ["COMMANDS", "main"]


def _sweep_ec2(args: argparse.Namespace) -> int:
    from .transports.ec2_sweep import sweep

    report = anyio.run(
        lambda: sweep(
            args.region,
            endpoint_url=args.endpoint_url,
            profile=args.profile,
            all_sessions=args.all,
        )
    )
    for iid in report.terminated:
        print(f"terminated {iid}")
    for group in report.security_groups_deleted:
        print(f"deleted security group {group}")
    for iid in report.kept:
        print(f"kept {iid} (its session is alive; --all to terminate it too)")
    if not report.terminated and not report.security_groups_deleted:
        print("nothing to sweep")
    return 0


def _sweep_kubernetes(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module("remote_futures.transports.kubernetes")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("remote_futures"):
            print("error: this version of remote_futures has no kubernetes transport",
                  file=sys.stderr)
            return 2
        raise
    sweep = getattr(module, "sweep", None)
    if sweep is None:
        print("error: the kubernetes transport of this version offers no sweep",
              file=sys.stderr)
        return 2
    wanted: dict[str, object] = {
        "namespace": args.namespace,
        "context": args.context,
        "kubeconfig": args.kubeconfig,
        "older_than": 0.0 if args.all else args.older_than,
        "dry_run": args.dry_run or None,
    }
    # Pass what was given and what the function accepts (its defaults stand for the rest).
    accepted = inspect.signature(sweep).parameters
    kwargs = {k: v for k, v in wanted.items() if v is not None and k in accepted}
    result = sweep(**kwargs)
    if inspect.isawaitable(result):
        awaitable = result

        async def wait() -> object:
            return await awaitable

        result = anyio.run(wait)
    if isinstance(result, (list, tuple)):
        for session in result:
            print(f"swept session {session}")
        if not result:
            print("nothing to sweep")
    elif result is not None:
        print(result)
    return 0


def _option_pairs(words: list[str]) -> dict[str, object] | None:
    """``--name value`` pairs as executor options; None (after saying why) if malformed."""
    options: dict[str, object] = {}
    while words:
        flag = words.pop(0)
        if not flag.startswith("--") or not words:
            print(f"error: expected --option value pairs, got {flag!r}", file=sys.stderr)
            return None
        raw = words.pop(0)
        try:  # numbers, true/false and tables (resources) as JSON; anything else is a string
            value: object = json.loads(raw)
        except ValueError:
            value = raw
        options[flag[2:].replace("-", "_")] = value
    return options


def _check(args: argparse.Namespace) -> int:
    from .check import check_target, format_report

    words = list(args.options)
    as_json = "--json" in words
    words = [word for word in words if word != "--json"]
    options = _option_pairs(words)
    if options is None:
        return 2
    report = check_target(args.target, options)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report, colour=colour_enabled(sys.stdout)))
    return 0 if report.ok else 1


def _add_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="connect to a target and say whether it can run calls (changes nothing)",
        description="Connect to TARGET (a transport or a profile) and print the remote Python, "
        "the scheduler and its version, the work directory and what environment sync would "
        "install. Options are those of RemoteExecutor, as --name value (--host login1 "
        "--user me --port 2222 --env off); --json for a machine-readable report. Exits 1 "
        "with the problem found.",
    )
    parser.add_argument("target", help="a transport (ssh, slurm, pbs, sge) or a profile name")
    parser.add_argument("options", nargs=argparse.REMAINDER,
                        help="--option value pairs, and --json")
    parser.set_defaults(run=_check)


def _add_sweep(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sweep", help="remove what dead executor sessions left behind (instances, jobs)"
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{ec2,kubernetes}")
    ec2 = kinds.add_parser(
        "ec2", help="terminate EC2 instances (and security groups) of dead sessions"
    )
    ec2.add_argument("--region", required=True, help="the AWS region")
    ec2.add_argument("--endpoint-url", help="another EC2 endpoint (an emulator)")
    ec2.add_argument("--profile", help="a profile of the AWS config")
    ec2.add_argument("--all", action="store_true",
                     help="every instance this tool launched, live sessions too")
    ec2.set_defaults(run=_sweep_ec2)
    k8s = kinds.add_parser("kubernetes", help="delete Jobs and Secrets of dead sessions")
    k8s.add_argument("--namespace", help="the namespace")
    k8s.add_argument("--context", help="a context of the kubeconfig")
    k8s.add_argument("--kubeconfig", help="a kubeconfig file")
    k8s.add_argument("--older-than", type=float, help="seconds without a heartbeat: dead")
    k8s.add_argument("--dry-run", action="store_true", help="only list what would go")
    k8s.add_argument("--all", action="store_true", help="every session's objects")
    k8s.set_defaults(run=_sweep_kubernetes)


def _jobs(args: argparse.Namespace) -> int:
    from .session_cli import dumps, format_sessions, summarize_sessions

    summaries = anyio.run(lambda: summarize_sessions(args.target, args.limit))
    if args.json:
        print(dumps([s.as_dict() for s in summaries]))
    else:
        print(format_sessions(summaries, colour=colour_enabled(sys.stdout)))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from .session_cli import dumps, format_logs, read_logs

    logs = anyio.run(lambda: read_logs(args.session, args.call))
    if args.json:
        print(dumps([log.as_dict() for log in logs]))
    else:
        print(format_logs(logs))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from .session_cli import cancel_session, dumps

    session, jobs = anyio.run(lambda: cancel_session(args.session))
    if args.json:
        print(dumps({"session_id": session.session_id,
                     "cancelled": [job.job_id for job in jobs]}))
    elif jobs:
        for job in jobs:
            print(f"cancelled {session.transport} job {job.job_id} ({job.name})")
    else:
        print(f"session {session.session_id} has no uncollected job: nothing to cancel")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from .session_cli import dumps, format_clean, plan_clean

    words = list(args.options)
    flags = {"--json", "--yes", "--uncollected"}
    given = {word for word in words if word in flags}
    words = [word for word in words if word not in flags]
    older = 1.0
    if "--older-than" in words:
        at = words.index("--older-than")
        try:
            older = float(words[at + 1])
        except (IndexError, ValueError):
            print("error: --older-than takes a number of days", file=sys.stderr)
            return 2
        del words[at : at + 2]
    options = _option_pairs(words)
    if options is None:
        return 2
    plan = anyio.run(lambda: plan_clean(
        args.target, options, older_than_days=older, uncollected="--uncollected" in given,
        remove="--yes" in given,
    ))
    print(dumps(plan.as_dict()) if "--json" in given else format_clean(plan))
    return 0


def _add_sessions(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = commands.add_parser(
        "jobs", help="this user's sessions and their jobs (the ledger and the scheduler)",
        description="List the sessions of the local session ledger (of TARGET, a transport "
        "or profile), with their calls counted as pending, running, done (an outcome was "
        "written: a result or a raised exception) and failed (the task ended without one); "
        "sessions whose results were not all collected are asked of the scheduler.",
    )
    jobs.add_argument("target", nargs="?", help="only sessions of this transport or profile")
    jobs.add_argument("--limit", type=int, default=20, help="the most recent N (0: all)")
    jobs.add_argument("--json", action="store_true", help="JSON for scripts")
    jobs.set_defaults(run=_jobs)
    logs = commands.add_parser(
        "logs", help="what a session's calls printed (from the remote job directories)",
        description="Print the captured stdout and stderr of CALL (its number in submission "
        "order, from 0) of SESSION, or of every call. A task that ran several calls "
        "(chunksize) holds the output of all of them.",
    )
    logs.add_argument("session", help="a session id (a unique prefix is enough)")
    logs.add_argument("call", nargs="?", type=int, help="the call's number")
    logs.add_argument("--json", action="store_true", help="JSON for scripts")
    logs.set_defaults(run=_logs)
    cancel = commands.add_parser(
        "cancel", help="cancel a session's jobs on the scheduler",
        description="Cancel, with the scheduler's own command, every job of SESSION whose "
        "results were not collected.",
    )
    cancel.add_argument("session", help="a session id (a unique prefix is enough)")
    cancel.add_argument("--json", action="store_true", help="JSON for scripts")
    cancel.set_defaults(run=_cancel)
    clean = commands.add_parser(
        "clean", help="remove old job directories and unused venvs on a target (dry run)",
        description="List the job directories and venvs in TARGET's work directory and what "
        "would go: job directories whose tasks all ended, older than --older-than days "
        "(default 1) and collected (--uncollected: those of dead clients too), never those "
        "of a session whose client runs; venvs not used since then, not the most recent, "
        "and run by no job directory. Nothing is removed without --yes. Options as for "
        "check (--host h --user u ...); --json for scripts.",
    )
    clean.add_argument("target", help="a transport (slurm, pbs, sge, ssh-jobs) or a profile")
    clean.add_argument("options", nargs=argparse.REMAINDER,
                       help="--option value pairs, --older-than DAYS, --uncollected, --yes, "
                       "--json")
    clean.set_defaults(run=_clean)


#: Subcommand name -> the function adding its parser (which sets ``run`` on the namespace).
COMMANDS: dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = {
    "check": _add_check,
    "sweep": _add_sweep,
    "sessions": _add_sessions,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="remote-futures", description="Tools around remote_futures executors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        status: int = args.run(args)
    except (RemoteFuturesError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # The cloud SDKs' own errors (no credentials, access denied, unknown region) say
        # what is wrong; a traceback would only hide it.
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "kubernetes_asyncio"):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return status
