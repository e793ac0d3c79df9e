"""Function-as-a-Task: ``@workflow`` marks the driver, ``@work`` turns a function into a task.

* Calling a ``@workflow`` function packs its source directory (reproducibly: the same tree gives
  the same sha256), uploads it to the server's cache (a repeat is free), and runs the driver:
  on this machine (``local=True``, the default), or as a job itself (``local=False``: the call
  returns an AsyncResult of the driver's return value).
* Inside a workflow, calling a ``@work`` function submits ONE task: ``f(*args, **kwargs)`` is
  one job, ``f(group_kwargs=[{...}, ...])`` one job per argument set (a dict is merged over the
  call's kwargs, a list or tuple replaces the positional arguments). The call returns an
  AsyncResult at once. Identical argument sets collapse into one call (one key).
* Outside any workflow a ``@work`` call runs the function here, in-process, and returns the
  value (or the list of values for ``group_kwargs``); ``PANDARS_LOCAL_WORK=1`` forces that.
* ``@work(image="docker://python:3.11-slim")`` (and ``@workflow(local=False, image=...)`` for
  the driver) runs the work's jobs inside that container image: the task's ``container_image``;
  brokerage sends it to queues declaring a container runtime, whose pilots run the job through
  apptainer, singularity, podman or docker with the job directory bound as working directory.
  The image needs a Python (``python3``, or the work's ``python=``) with ``grpcio`` and
  ``protobuf`` installed; ``pandars`` itself comes with the code: the archive of such a work also
  holds this SDK's package as ``.pandars-sdk/pandars`` (unpacked into the job directory) and the
  job's ``PYTHONPATH`` is ``.pandars-sdk``, so ``python -m pandars.runtime`` imports the caller's
  version whatever the image has.
"""

import contextlib
import functools
import getpass
import hashlib
import inspect
import json
import os
import sys
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

from pandars.archive import SDK_DIR
from pandars.client import Client, task_spec
from pandars.result import AsyncResult
from pandars.serialize import SerializationError, dump_args, json_problem

_context = threading.local()


class WorkflowContext:
    """Where works of the running workflow go: the client and the uploaded code."""

    def __init__(self, client: Client, code_sha256: str, name: str, source_dir: str, queue: str = ""):
        self.client = client
        self.code_sha256 = code_sha256
        self.name = name
        self.source_dir = source_dir
        self.queue = queue
        self.works = 0
        self._image_code_sha256 = None
        self._lock = threading.Lock()

    def image_code_sha256(self) -> str:
        """The code archive of works that run in a container image: the source directory plus
        this SDK's package (``.pandars-sdk/pandars``), uploaded at the first such work."""
        with self._lock:
            if self._image_code_sha256 is None:
                self._image_code_sha256 = self.client.upload_dir(self.source_dir, uploader=_user(), with_sdk=True)
            return self._image_code_sha256


def current() -> Optional[WorkflowContext]:
    stack = getattr(_context, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def workflow_context(ctx: WorkflowContext):
    stack = getattr(_context, "stack", None)
    if stack is None:
        stack = _context.stack = []
    stack.append(ctx)
    try:
        yield ctx
    finally:
        stack.pop()


def _jsonable(value):
    return json_problem([value], {}) is None


def call_key(arg_set) -> str:
    """The key of an argument set: its canonical JSON (sorted keys) when it is JSON, else
    ``sha1:`` of its pickle."""
    if _jsonable(arg_set):
        return json.dumps(arg_set, sort_keys=True, separators=(",", ":"), allow_nan=False)
    from pandars.serialize import _pickle  # noqa: PLC0415

    return "sha1:" + hashlib.sha1(_pickle(arg_set, "argument set")).hexdigest()  # noqa: S324 - a key, not security


def function_ref(func: Callable, source_dir: str) -> str:
    """``<module>:<qualname>``. A function defined under the source directory is named by its
    module when that module is importable from there, else (a script, ``__main__``, a file loaded
    by path) by its file path relative to the source directory: the runtime imports that file
    without running its ``if __name__ == "__main__":`` block. A function from elsewhere (an
    installed package) is named by its module, which the job's Python must have too."""
    if "<locals>" in func.__qualname__:
        raise ValueError(f"{func.__qualname__}: a work must be a module-level function")
    module = func.__module__ or "__main__"
    if module.endswith(".py"):
        return f"{module}:{func.__qualname__}"  # a script's function, loaded by path in a job
    path = inspect.getsourcefile(func)
    rel = os.path.relpath(os.path.abspath(path), source_dir) if path else None
    inside = rel is not None and not rel.startswith("..")
    if not inside:
        if module == "__main__":
            raise ValueError(f"{path} is outside the workflow's source directory {source_dir}")
        return f"{module}:{func.__qualname__}"
    as_module = os.path.join(source_dir, *module.split("."))
    importable = os.path.isfile(as_module + ".py") or os.path.isfile(os.path.join(as_module, "__init__.py"))
    if module != "__main__" and importable:
        return f"{module}:{func.__qualname__}"
    return f"{rel.replace(os.sep, '/')}:{func.__qualname__}"


class Work:
    """A ``@work`` function (see the module doc)."""

    def __init__(self, func, map_results=False, name=None, serializer="auto", cores=1, memory_mb=0,
                 walltime=0, queue="", python=None, max_attempts=1, priority=0, pre_kwargs=None, warm=True,
                 image=None):
        functools.update_wrapper(self, func)
        self.func = func
        self.map_results = map_results
        self.name = name or func.__name__
        if serializer not in ("auto", "json", "pickle"):
            raise ValueError(f"serializer must be 'auto', 'json' or 'pickle' (got {serializer!r})")
        self.serializer = serializer
        self.cores = cores
        self.memory_mb = memory_mb
        self.walltime = int(walltime)
        self.queue = queue
        self.python = python or os.environ.get("PANDARS_PYTHON") or "python3"
        self.max_attempts = max_attempts
        self.priority = priority
        self.pre_kwargs = dict(pre_kwargs or {})
        #: Let pilots run several jobs of this work (and of later works) in one warm interpreter.
        self.warm = warm
        #: Container image the jobs run in (see the module doc); a warm runtime of this work
        #: starts inside it and is never shared with works of another image.
        self.image = image or ""

    __pandars_work__ = True

    def _arg_sets(self, args, kwargs, group_kwargs):
        base = {**self.pre_kwargs, **kwargs}
        if group_kwargs is None:
            return [(list(args), base)], True
        sets = []
        for i, element in enumerate(group_kwargs):
            if isinstance(element, dict):
                sets.append((list(args), {**base, **element}))
            elif isinstance(element, (list, tuple)):
                sets.append((list(element), base))
            else:
                raise TypeError(f"group_kwargs[{i}] must be a dict (keyword arguments) or a list/tuple (positional), "
                                f"got {type(element).__name__}")
        if not sets:
            raise ValueError("group_kwargs is empty: nothing to run")
        return sets, False

    def __call__(self, *args, group_kwargs: Optional[Sequence[Any]] = None, **kwargs):
        ctx = current()
        sets, single = self._arg_sets(args, kwargs, group_kwargs)
        if ctx is None or os.environ.get("PANDARS_LOCAL_WORK") == "1":
            values = [self.func(*a, **k) for a, k in sets]
            if self.map_results:
                return {call_key(e): v for e, v in zip(group_kwargs or [kwargs], values)}
            return values[0] if single else values
        return self.submit(ctx, sets, single, group_kwargs if group_kwargs is not None else [kwargs])

    def submit(self, ctx: WorkflowContext, sets, single, elements) -> AsyncResult:
        """Submits the calls as one task; returns their AsyncResult."""
        serializer = self.serializer
        if serializer == "auto":
            serializer = "json" if all(json_problem(a, k) is None for a, k in sets) else "pickle"
        calls, seen = [], set()
        for i, ((a, k), element) in enumerate(zip(sets, elements)):
            try:
                data = dump_args(a, k, serializer)
            except SerializationError as error:
                raise SerializationError(f"{self.name}: call {i}: {error}") from None
            key = call_key(element) if not single else "call"
            if key in seen:
                continue  # identical argument sets are one call
            seen.add(key)
            calls.append((key, data))
        ctx.works += 1
        name = f"{ctx.name}.{self.name}.{ctx.works}"[:200]
        environment, code_sha256 = {}, ctx.code_sha256
        if self.image:
            # The image may lack pandars: the archive carries this SDK, found through PYTHONPATH
            # (relative entries are made absolute against the job directory when Python starts).
            code_sha256 = ctx.image_code_sha256()
            environment["PYTHONPATH"] = SDK_DIR
        spec = task_spec(
            name=_task_name(name),
            user=_user(),
            command=f"{self.python} -m pandars.runtime --index {{index}}",
            n_jobs=len(calls),
            environment=environment,
            container_image=self.image,
            code_sha256=code_sha256,
            cores=self.cores,
            memory_mb=self.memory_mb,
            walltime_seconds=self.walltime,
            queues=[q for q in (self.queue or ctx.queue,) if q],
            priority=self.priority,
            max_attempts=self.max_attempts,
        )
        ref = function_ref(self.func, ctx.source_dir)
        warm = f"{self.python} -m pandars.runtime --serve" if self.warm else ""
        task_id = ctx.client.submit_work(spec, ref, serializer, calls, idempotency_key=f"pandars-{uuid.uuid4()}",
                                         warm_command=warm)
        return AsyncResult(ctx.client, task_id, [k for k, _ in calls], map_results=self.map_results,
                           single=single and not self.map_results)


def _task_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "work"


def _user() -> str:
    try:
        return os.environ.get("PANDA_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return "pandars"


def work(func=None, **options):
    """``@work`` or ``@work(map_results=True, walltime=60, image="docker://python:3.11-slim", ...)``:
    see :class:`Work` and, for ``image``, the module doc."""
    if func is None:
        return lambda f: Work(f, **options)
    return Work(func, **options)


class Workflow:
    """A ``@workflow`` driver (see the module doc)."""

    def __init__(self, func, local=True, source_dir=None, name=None, server=None, queue="", python=None,
                 walltime=0, image=None):
        functools.update_wrapper(self, func)
        self.func = func
        self.local = local
        self.source_dir = os.path.abspath(source_dir or os.path.dirname(inspect.getsourcefile(func) or "."))
        self.name = name or func.__name__
        self.server = server
        self.queue = queue
        self.python = python or os.environ.get("PANDARS_PYTHON") or "python3"
        self.walltime = walltime
        #: Container image of the driver's job (``local=False``); the works name their own.
        self.image = image or ""

    __pandars_workflow__ = True

    def context(self, client: Optional[Client] = None) -> WorkflowContext:
        """Packs and uploads the source directory; the context works of this workflow use."""
        client = client or Client(self.server)
        sha256 = client.upload_dir(self.source_dir, uploader=_user())
        return WorkflowContext(client, sha256, _task_name(self.name), self.source_dir, self.queue)

    def __call__(self, *args, client: Optional[Client] = None, **kwargs):
        if os.environ.get("PANDARS_IN_WORKFLOW_JOB") == "1":
            return self.func(*args, **kwargs)
        ctx = self.context(client)
        if self.local:
            with workflow_context(ctx):
                return self.func(*args, **kwargs)
        # Remote: the driver itself runs as a one-call work (see runtime.run_call).
        # The driver waits for its works for a long time: it gets a process of its own.
        driver = Work(self.func, name=self.name, python=self.python, walltime=self.walltime, queue=self.queue,
                      warm=False, image=self.image)
        driver.func = self.func
        return driver.submit(ctx, [(list(args), kwargs)], True, [kwargs])


def workflow(func=None, **options):
    """``@workflow`` or ``@workflow(local=False, source_dir=..., server=..., image=...)``; ``image``
    is the container image the remote driver's job runs in (see the module doc)."""
    if func is None:
        return lambda f: Workflow(f, **options)
    return Workflow(func, **options)
