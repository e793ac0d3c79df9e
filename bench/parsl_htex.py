"""The comparison for the FaaT bench (a): N no-op Parsl apps on Parsl's HighThroughputExecutor,
local workers on this machine, tasks/s from the first submission to the last result (nothing is
stored). Not part of the project's tests; needs its own venv:

    python3 -m venv /tmp/parsl && /tmp/parsl/bin/pip install parsl
    PATH=/tmp/parsl/bin:$PATH python bench/parsl_htex.py 4 10000     # workers, apps
"""
import sys
import time

import parsl
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider
from parsl import python_app


workers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
parsl.load(Config(executors=[HighThroughputExecutor(label="htex", max_workers_per_node=workers,
                                                    provider=LocalProvider(init_blocks=1, max_blocks=1))]))


@python_app
def noop(i):
    return i


# Warm-up: the workers are up before the clock starts.
[f.result() for f in [noop(i) for i in range(100)]]
t = time.monotonic()
futures = [noop(i) for i in range(n)]
values = [f.result() for f in futures]
dt = time.monotonic() - t
assert values == list(range(n))
print(f"parsl {parsl.__version__} HTEX workers={workers}: {n} no-op apps in {dt:.2f}s = {n/dt:.0f} tasks/s")
parsl.dfk().cleanup()
