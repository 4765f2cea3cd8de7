"""Run by the benchmark ON the testbed host as the SLURM user: submitit's `map_array` of N
trivial calls (or one `submit`), printing the wall time. submitit needs a local sbatch."""

import sys
import tempfile
import time

import submitit


def square(x: int) -> int:
    return x * x


def main() -> None:
    n = int(sys.argv[1])
    folder = tempfile.mkdtemp(prefix="submitit-bench-", dir=".")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=10, slurm_partition=sys.argv[2],
                               slurm_array_parallelism=int(sys.argv[3]))
    start = time.perf_counter()
    if n == 1:
        executor.submit(square, 3).result()
    else:
        jobs = executor.map_array(square, range(n))
        [job.result() for job in jobs]
    print(f"{time.perf_counter() - start:.3f}")


if __name__ == "__main__":
    main()
