"""Environment sync: the cost of a start when nothing changed, and uv against pip.

    python benchmarks/bench_envsync.py [--repeats 7] [--ssh]

1. No-op sync: ``sync_environment`` when the venv is already complete, through LocalShell (and
   through SSHShell to the testbed's slurmuser with ``--ssh``): wall time and round trips. The
   first (installing) sync is shown for scale.
2. Installing the same k=5 tiny wheels + cloudpickle from the same local wheelhouse into fresh
   venvs: ``uv pip install`` (warm cache, and ``--no-cache``) against ``pip install``. Venv
   creation is not timed; runs are interleaved (A B C A B C ...) and medians reported.

Everything is hermetic: the wheels are written by ``tests/envsync/envsync_wheelhouse.py``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "envsync"))
sys.path.insert(0, str(ROOT / "tests"))

from envsync_wheelhouse import build_wheelhouse  # noqa: E402

from remote_futures.envsync import EnvSpec, sync_environment  # noqa: E402
from remote_futures.shell import LocalShell, Shell  # noqa: E402

K = 5
CLOUDPICKLE = importlib.metadata.version("cloudpickle")


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:9.1f}"


def bench_noop(shell_factory: Callable[[], Shell], label: str, work_dir: str, find_links: str,
               repeats: int) -> list[tuple[str, str, str]]:
    spec = EnvSpec(find_links=(find_links,), no_index=True)
    local = {f"rf-bench-{i}": "1.0" for i in range(1, K + 1)} | {"cloudpickle": CLOUDPICKLE}

    async def main() -> list[tuple[str, str, str]]:
        async with shell_factory() as shell:
            start = time.perf_counter()
            first = await sync_environment(shell, python="python3", work_dir=work_dir, spec=spec,
                                           local=local)
            first_time = time.perf_counter() - start
            times, trips = [], set()
            for _ in range(repeats):
                start = time.perf_counter()
                again = await sync_environment(shell, python="python3", work_dir=work_dir,
                                               spec=spec, local=local)
                times.append(time.perf_counter() - start)
                trips.add(again.round_trips)
            return [
                (f"{label}: first sync (installs {len(first.installed)})",
                 f"{first_time * 1000:9.1f}", str(first.round_trips)),
                (f"{label}: no-op sync (median of {repeats})", median_ms(times),
                 "/".join(map(str, sorted(trips)))),
            ]

    return anyio.run(main)


def clean_env() -> dict[str, str]:
    # The machine's pip configuration (extra indexes, find-links, constraints) would make the
    # two installers do different work; both get only what the command line says.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def bench_install(wheelhouse: Path, repeats: int) -> list[tuple[str, str, str]]:
    uv = shutil.which("uv") or sys.exit("uv is needed")
    packages = [f"rf-bench-{i}" for i in range(1, K + 1)] + [f"cloudpickle=={CLOUDPICKLE}"]
    common = ["--no-index", "--find-links", str(wheelhouse), *packages]
    env = clean_env()
    samples: dict[str, list[float]] = {"uv pip install (warm cache)": [],
                                       "uv pip install --no-cache": [], "pip install": []}
    with tempfile.TemporaryDirectory(prefix="rf-bench-") as tmp:
        subprocess.run([uv, "venv", "-q", f"{tmp}/warmup"], check=True, env=env)
        subprocess.run([uv, "pip", "install", "-q", "--python", f"{tmp}/warmup/bin/python",
                        *common], check=True, env=env)  # fills uv's cache once
        for i in range(repeats):
            for name in samples:
                venv = f"{tmp}/{i}-{len(name)}"
                if name == "pip install":
                    subprocess.run([sys.executable, "-m", "venv", venv], check=True, env=env)
                    argv = [f"{venv}/bin/python", "-m", "pip", "install", "-q", *common]
                else:
                    subprocess.run([uv, "venv", "-q", venv], check=True, env=env)
                    argv = [uv, "pip", "install", "-q", "--python", f"{venv}/bin/python", *common]
                    if "no-cache" in name:
                        argv.insert(3, "--no-cache")
                start = time.perf_counter()
                subprocess.run(argv, check=True, env=env)
                samples[name].append(time.perf_counter() - start)
    pip = statistics.median(samples["pip install"])
    rows = []
    for name, values in samples.items():
        ratio = pip / statistics.median(values)
        rows.append((f"install {K}+1 wheels: {name}", median_ms(values), f"{ratio:5.1f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ssh", action="store_true", help="also sync over SSH to the testbed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rf-bench-wheels-") as tmp:
        wheelhouse = build_wheelhouse(Path(tmp) / "wheels", bench=K)
        rows = bench_noop(LocalShell, "LocalShell", f"{tmp}/work", str(wheelhouse), args.repeats)
        if args.ssh:
            rows += bench_ssh(wheelhouse, args.repeats)
        rows += bench_install(wheelhouse, args.repeats)
    width = max(len(r[0]) for r in rows)
    print(f"{'scenario':<{width}}  {'ms':>9}  round trips / speed-up vs pip")
    for name, ms, extra in rows:
        print(f"{name:<{width}}  {ms}  {extra}")


def bench_ssh(wheelhouse: Path, repeats: int) -> list[tuple[str, str, str]]:
    from testbed_facts import load_facts

    from remote_futures.ssh import SSHShell

    facts = load_facts()

    def factory() -> Shell:
        return SSHShell(facts.host, port=facts.port, user=facts.slurm_user,
                        identity_file=str(facts.key), known_hosts=str(facts.known_hosts))

    scratch = f"rf-bench-envsync-{os.getpid()}"

    async def upload() -> str:
        async with factory() as shell:
            home = await shell.home()
            await shell.makedirs(f"{scratch}/wheels")
            for wheel in wheelhouse.glob("*.whl"):
                await shell.write_file(f"{scratch}/wheels/{wheel.name}", wheel.read_bytes())
            return home

    async def cleanup() -> None:
        async with factory() as shell:
            await shell.run(f"rm -rf {scratch}")

    home = anyio.run(upload)
    try:
        return bench_noop(factory, "SSH testbed", f"{scratch}/work", f"{home}/{scratch}/wheels",
                          repeats)
    finally:
        anyio.run(cleanup)


if __name__ == "__main__":
    main()
