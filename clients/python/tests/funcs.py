"""Work functions the tests submit (imported by the runtime in jobs as module `funcs`)."""

import os
import threading
import time

from pandars import work


@work
def square(x):
    return x * x


@work(map_results=True)
def add(a, b=0):
    return a + b


@work
def boom(x):
    if x == 2:
        raise ZeroDivisionError(f"cannot handle {x}")
    return x


@work
def unserializable():
    return threading.Lock()


@work(walltime=2)
def sleepy(seconds):
    time.sleep(seconds)
    return seconds


@work
def crash():
    os._exit(7)


@work
def where():
    return {"job": os.environ.get("PANDA_JOB_ID"), "cwd_has_funcs": os.path.exists("funcs.py")}


@work
def noop():
    return None


def objective(x, y):
    return (x - 0.3) ** 2 + (y + 0.2) ** 2


@work(map_results=True)
def evaluate(x, y):
    return objective(x, y)


@work
def pid(i):
    return {"pid": os.getpid(), "job": int(os.environ.get("PANDA_JOB_ID", "0")), "i": i}


@work
def maybe_crash(x):
    if x == 2:
        os._exit(9)
    return x


@work(warm=False)
def cold_pid(i):
    return os.getpid()


def _inside(x):
    import pandars  # noqa: PLC0415

    return {"square": x * x, "pandars": pandars.__file__, "cwd": os.getcwd(), "pid": os.getpid(),
            "image": os.environ.get("PANDA_CONTAINER_IMAGE", "")}


@work(image="docker://python:3.11-slim")
def in_image(x):
    return _inside(x)


@work(image="docker://python:3.11-slim", warm=False)
def in_image_cold(x):
    return _inside(x)
