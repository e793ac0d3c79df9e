"""The functions pandars.bench runs (a module of their own: jobs import them by name)."""

import time

from pandars import work


@work
def noop(i):
    return None


@work
def objective(x, seconds):
    time.sleep(seconds)
    return x * x
