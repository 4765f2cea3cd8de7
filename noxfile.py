"""Developer and CI sessions: ``nox -s tests`` is the one test command (see README)."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite. Tests that need the testbed skip locally without it and fail
    under CI=true; start it first with ``nox -s testbed`` (as root)."""
    session.install("-e", ".[test,ssh]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q", "-ra"]))


@nox.session(venv_backend="none")
def testbed(session: nox.Session) -> None:
    """Install (apt) and start the testbed: real sshd, SLURM, SGE and PBS wrappers (root)."""
    if os.geteuid() != 0:
        session.error("the testbed installs packages and starts daemons: run as root")
    session.run("bash", "tests/testbed/up.sh", external=True)


@nox.session(venv_backend="none")
def testbed_stop(session: nox.Session) -> None:
    """Stop what the testbed started."""
    session.run("bash", "tests/testbed/stop.sh", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[test,ssh]", "mypy")
    session.run("mypy", "--strict", "remote_futures")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against peers in the same run (ratios, not assertions)."""
    session.install("-e", ".[ssh]")
    facts = os.path.join(os.environ.get("RF_TESTBED_DIR", "/tmp/rf-testbed"), "testbed.json")
    scripts = ["benchmarks/bench_local.py", "benchmarks/bench_scale.py",
               "benchmarks/bench_envsync.py", "benchmarks/bench_ledger.py"]
    if os.path.exists(facts):
        # submitit runs on the testbed host as the SLURM user, with the testbed's Python.
        session.run("uv", "pip", "install", "--quiet", "--python",
                    "/opt/rf-remote-python/bin/python", "submitit", external=True)
        # dask-jobqueue's SLURMCluster beside pool=True (its workers run this session's Python).
        session.install("dask-jobqueue")
        scripts += ["benchmarks/bench_schedulers.py", "benchmarks/bench_ssh_pool.py",
                    "benchmarks/bench_bigargs.py", "benchmarks/bench_pilot_pool.py",
                    "benchmarks/bench_bursts.py", "benchmarks/bench_default_workers.py",
                    "benchmarks/bench_output.py"]
        with open(facts) as f:
            if "RF_K8S_KUBECONFIG" in f.read():
                session.install("-e", ".[k8s]")
                scripts += ["benchmarks/bench_kubernetes.py"]
    for script in session.posargs or scripts:
        session.run("python", script)
