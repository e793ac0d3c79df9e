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


def _stages(client, task_id, t0):
    """Where an iteration's time went (server timestamps, ms from the submission): jobs created
    (submission + JEDI), first and last job sent (dispatch)."""
    jobs = client.list_jobs(task_id)
    stamp = lambda ts: ts.ToDatetime().timestamp()  # noqa: E731
    sent = [stamp(j.state_times["sent"]) for j in jobs if "sent" in j.state_times]
    return {"created": 1000 * (min(stamp(j.created_at) for j in jobs) - t0),
            "first_sent": 1000 * (min(sent) - t0) if sent else float("nan"),
            "last_sent": 1000 * (max(sent) - t0) if sent else float("nan")}


def bench_iterations(iterations, points, seconds, client=None):
    overheads, stages = [], []
    for i in range(iterations):
        t0 = time.time()
        started = time.monotonic()
        result = objective(group_kwargs=[{"x": i + p / 10, "seconds": seconds} for p in range(points)])
        result.get(timeout=600)
        overheads.append(time.monotonic() - started - seconds)
        if client is not None:
            stages.append(_stages(client, result.task_id, t0))
    report = {"iterations": iterations, "points": points, "objective_s": seconds,
              "overhead_median_ms": 1000 * statistics.median(overheads),
              "overhead_mean_ms": 1000 * statistics.mean(overheads),
              "overhead_max_ms": 1000 * max(overheads)}
    if stages:
        # Medians over the iterations after the first (which starts the pilots and runtimes).
        steady = stages[1:] or stages
        for key in ("created", "first_sent", "last_sent"):
            report[f"median_{key}_ms"] = statistics.median(s[key] for s in steady)
    return report


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
                    print("(b)", bench_iterations(options.iterations, options.points, options.sleep, client),
                          flush=True)
    finally:
        if system is not None:
            system.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
