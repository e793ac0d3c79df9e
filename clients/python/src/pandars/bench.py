"""Function-as-a-Task benchmark, embedded (``panda up`` started here unless --server is given):

(a) ``--functions N`` no-op functions as ONE @work call with N argument sets: functions/s from
    submission to the last result (every result is stored by the server before it is counted);
(b) ``--iterations I --points P`` of a ``--sleep`` seconds objective: the per-iteration overhead
    (wall time of the iteration minus the objective's own time).

    python -m pandars.bench --functions 10000 --iterations 20 --points 5
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from pandars._benchfuncs import noop, objective
from pandars.faat import WorkflowContext, workflow_context


def bench_functions(ctx, n):
    started = time.monotonic()
    result = noop(group_kwargs=[[i] for i in range(n)])
    submitted = time.monotonic()
    values = result.get(timeout=max(600, n))
    ended = time.monotonic()
    stored, _ = ctx.client.list_results(result.task_id)
    assert len(values) == n and len(stored) == n, "every result is durable"
    return {"functions": n, "submit_s": submitted - started, "total_s": ended - started,
            "functions_per_s": n / (ended - started)}


def bench_iterations(iterations, points, seconds):
    overheads = []
    for i in range(iterations):
        started = time.monotonic()
        objective(group_kwargs=[{"x": i + p / 10, "seconds": seconds} for p in range(points)]).get(timeout=600)
        overheads.append(time.monotonic() - started - seconds)
    return {"iterations": iterations, "points": points, "objective_s": seconds,
            "overhead_median_ms": 1000 * statistics.median(overheads),
            "overhead_mean_ms": 1000 * statistics.mean(overheads),
            "overhead_max_ms": 1000 * max(overheads)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pandars.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", type=int, default=10000)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=4, help="local pilots of the embedded system")
    parser.add_argument("--server", default=None, help="use a running server instead of starting panda up")
    options = parser.parse_args(argv)
    from pandars.client import Client  # noqa: PLC0415
    from pandars.embedded import Embedded  # noqa: PLC0415

    system = None if options.server else Embedded(local_workers=options.workers)
    try:
        client = Client(options.server) if options.server else system.client
        with tempfile.TemporaryDirectory() as code:
            with open(os.path.join(code, "README"), "w") as f:
                f.write("pandars bench: the functions come from the installed pandars.bench\n")
            ctx = WorkflowContext(client, client.upload_dir(code), "bench", code)
            with workflow_context(ctx):
                if options.functions:
                    print("(a)", bench_functions(ctx, options.functions), flush=True)
                if options.iterations:
                    print("(b)", bench_iterations(options.iterations, options.points, options.sleep), flush=True)
    finally:
        if system is not None:
            system.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
