"""The job side of Function-as-a-Task: ``python -m pandars.runtime --index N``, the command of
every job of a work. It reads its call from the server (GetCall), imports the function from the
code archive the pilot unpacked into the job directory, runs it, and stores the result
(PutResult), which the server keeps and publishes to the caller.

Exit codes: 0 the function returned and its result was stored; 1 the function raised or its
value could not be serialized (a failure result was stored, carrying the exception type, message
and traceback); 2 the call could not be read or the result not stored (the server then stores a
failure result when the job ends).

Environment (set by the pilot): PANDA_SERVER_URL, PANDA_TASK_ID, PANDA_JOB_ID, PANDA_CODE_SHA256.

``python -m pandars.runtime --serve`` is the warm runtime: one interpreter that runs several jobs
of a work (and of later works with the same code) for a pilot. The pilot writes one line per job
on its stdin (``{"task": T, "job": J, "index": I}``); the runtime reads the calls of the jobs it
has in one ``GetCalls``, runs them one after the other (``{"event": "start", "job": J}`` before
each), stores the results in one ``PutResults`` per batch (after at most ``FLUSH_AFTER``
seconds or ``FLUSH_EVERY`` results, and whenever it has nothing else to run) and only then tells
the pilot (``{"event": "done", "results": [{"job", "ok", "error", "stdout", "stderr",
"seconds"}]}``), which reports the jobs. The protocol uses the process's original stdout; the
functions' own output is captured per call (its tails go with the job's final report) and
anything else written to fd 1 goes to stderr. EOF on stdin: flush and exit 0. A server that
cannot be reached for ``STORE_PATIENCE`` seconds: exit 2 (the pilot fails the jobs it handed).
"""

import argparse
import collections
import contextlib
import importlib
import importlib.util
import io
import json
import os
import queue
import sys
import threading
import time
import traceback

import grpc

from pandars._stubs import function_pb2
from pandars.client import Client
from pandars.serialize import SerializationError, dump_value, load_args


def resolve(ref: str, base_dir: str):
    """The object named ``<module>:<qualname>``; a module ending in ``.py`` is a file path
    relative to ``base_dir`` (a script's functions), imported without running as ``__main__``."""
    module_name, _, qualname = ref.partition(":")
    if base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    if module_name.endswith(".py"):
        module = sys.modules.get(module_name)
        if module is None:
            path = os.path.join(base_dir, module_name)
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _error(exc: BaseException, tb: str) -> "function_pb2.FunctionError":
    return function_pb2.FunctionError(type=type(exc).__name__, message=str(exc), traceback=tb)


def execute(call, base_dir, client, task_id):
    """Runs one call; returns the FunctionResult to store (never raises for the function's own
    failures)."""
    from pandars import faat  # noqa: PLC0415

    started = time.monotonic()
    result = function_pb2.FunctionResult(task_id=task_id, key=call.key)
    try:
        target = resolve(call.function, base_dir)
        args, kwargs = load_args(call.args, call.serializer)
        if getattr(target, "__pandars_workflow__", False):
            # A remote workflow's driver: its works go to the same server with the same code.
            ctx = faat.WorkflowContext(client, os.environ.get("PANDA_CODE_SHA256", ""), target.name, base_dir,
                                       target.queue)
            with faat.workflow_context(ctx):
                value = target.func(*args, **kwargs)
        else:
            func = target.func if getattr(target, "__pandars_work__", False) else target
            value = func(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure of the user's code is reported
        if isinstance(exc, KeyboardInterrupt):
            raise
        result.ok = False
        result.error.CopyFrom(_error(exc, traceback.format_exc()))
        result.duration_seconds = time.monotonic() - started
        return result
    result.duration_seconds = time.monotonic() - started
    try:
        data, serializer = dump_value(value)
    except SerializationError as exc:
        result.ok = False
        result.error.CopyFrom(_error(exc, ""))
        return result
    result.ok = True
    result.value = data
    result.serializer = serializer
    return result


#: Results are stored at least this often (seconds) while calls keep running ...
FLUSH_AFTER = 0.05
#: ... or when this many wait.
FLUSH_EVERY = 200
#: How long the server may be unreachable before the warm runtime gives up (exit 2).
STORE_PATIENCE = 60.0
#: Captured output kept per call (the tail).
TAIL_CHARS = 2048


class _Tail(io.StringIO):
    """A call's captured stdout or stderr (only the tail is reported)."""

    def tail(self) -> str:
        return self.getvalue()[-TAIL_CHARS:]


def _retrying(what, call):
    """``call()``, retried while the server is unavailable, up to STORE_PATIENCE seconds."""
    deadline = time.monotonic() + STORE_PATIENCE
    delay = 0.05
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            transient = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not transient or time.monotonic() + delay > deadline:
                raise
            print(f"pandars.runtime: {what} failed ({error.code().name}); retrying", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class Server:
    """The warm runtime (see the module doc)."""

    def __init__(self, client, protocol, base_dir):
        self.client = client
        self.protocol = protocol
        self.base_dir = base_dir
        self.inbox = queue.Queue()
        self.queued = collections.deque()  # jobs handed by the pilot, not run yet
        self.calls = {}  # (task, index) -> call view
        self.buffer = []  # (job entry, FunctionResult, stdout tail, stderr tail)
        self.first_buffered = None

    def _emit(self, message) -> None:
        self.protocol.write(json.dumps(message, separators=(",", ":")) + "\n")
        self.protocol.flush()

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
                self.inbox.put((int(entry["task"]), int(entry["job"]), int(entry["index"])))
            except (ValueError, KeyError, TypeError) as error:
                print(f"pandars.runtime: ignoring a bad line from the pilot ({error}): {line[:200]}", file=sys.stderr,
                      flush=True)
        self.inbox.put(None)

    def _take(self, block: bool) -> bool:
        """Moves handed jobs into the queue; False once stdin ended and nothing is left."""
        try:
            item = self.inbox.get(block=block)
            while True:
                if item is None:
                    return False
                self.queued.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return True

    def _fetch_calls(self) -> None:
        """Reads the calls of queued jobs that have none yet, one GetCalls per work."""
        wanted = collections.OrderedDict()
        for task, _job, index in self.queued:
            if (task, index) not in self.calls:
                wanted.setdefault(task, []).append(index)
        for task, indexes in wanted.items():
            for start in range(0, len(indexes), 1000):
                chunk = indexes[start:start + 1000]
                try:
                    answer = _retrying("GetCalls", lambda t=task, c=chunk: self.client.get_calls(t, c))
                except grpc.RpcError as error:
                    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    for index in chunk:  # the call cannot be read: its job fails with why
                        self.calls[(task, index)] = error
                    continue
                for call in answer.calls:
                    self.calls[(task, call.index)] = type("Call", (), {
                        "function": answer.function, "serializer": answer.serializer, "key": call.key,
                        "args": call.args})

    def _run_one(self) -> None:
        task, job, index = self.queued.popleft()
        call = self.calls.pop((task, index), None)
        self._emit({"event": "start", "job": job})
        out, err = _Tail(), _Tail()
        if call is None or isinstance(call, grpc.RpcError):
            why = call.details() if isinstance(call, grpc.RpcError) else "the call was not found"
            result = function_pb2.FunctionResult(task_id=task, ok=False)
            result.error.CopyFrom(function_pb2.FunctionError(type="CallNotFound", message=why))
        else:
            os.environ["PANDA_TASK_ID"] = str(task)
            os.environ["PANDA_JOB_ID"] = str(job)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                result = execute(call, self.base_dir, self.client, task)
        result.index = index
        if not result.ok and result.error.traceback:
            err.write(result.error.traceback)
        if self.first_buffered is None:
            self.first_buffered = time.monotonic()
        self.buffer.append((job, result, out.tail(), err.tail()))

    def _flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer, self.first_buffered = self.buffer, [], None
        outcomes = _retrying("PutResults", lambda: self.client.put_results([(job, r) for job, r, _o, _e in batch]))
        done = []
        for (job, result, out, err), outcome in zip(batch, outcomes):
            ok = result.ok and outcome.code == 0
            if outcome.code != 0:
                error = f"result not stored: {outcome.message}"
            elif not result.ok:
                error = f"{result.error.type}: {result.error.message}"
            else:
                error = ""
            done.append({"job": job, "ok": ok, "error": error[:4000], "stdout": out, "stderr": err,
                         "seconds": result.duration_seconds})
        self._emit({"event": "done", "results": done})

    def serve(self) -> int:
        threading.Thread(target=self._read_stdin, name="pandars-runtime-stdin", daemon=True).start()
        open_ = True
        while True:
            if open_:
                open_ = self._take(block=not self.queued and not self.buffer)
            if not self.queued:
                self._flush()
                if not open_:
                    return 0
                continue
            self._fetch_calls()
            self._run_one()
            if (not self.queued and self.inbox.empty()) or len(self.buffer) >= FLUSH_EVERY or \
                    time.monotonic() - self.first_buffered >= FLUSH_AFTER:
                self._flush()


def serve(server=None) -> int:
    """``--serve``: the warm runtime's loop (see the module doc)."""
    # The protocol keeps the original stdout; fd 1 becomes stderr for whatever else writes there.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    os.environ["PANDARS_IN_WORKFLOW_JOB"] = "1"
    client = Client(server)
    try:
        return Server(client, protocol, os.getcwd()).serve()
    except grpc.RpcError as error:
        print(f"pandars.runtime: the server cannot be reached: {error.code().name}: {error.details()}",
              file=sys.stderr, flush=True)
        return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pandars.runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=int, help="the job index (1-based): which call to run")
    parser.add_argument("--serve", action="store_true", help="the warm runtime: run jobs the pilot hands over")
    parser.add_argument("--task", type=int, default=int(os.environ.get("PANDA_TASK_ID", "0") or 0))
    parser.add_argument("--job", type=int, default=int(os.environ.get("PANDA_JOB_ID", "0") or 0))
    parser.add_argument("--server", default=None, help="server URL (default $PANDA_SERVER_URL)")
    options = parser.parse_args(argv)
    if options.serve:
        return serve(options.server)
    if options.index is None:
        parser.error("--index is required (or --serve)")
    if not options.task or not options.job:
        print("pandars.runtime: PANDA_TASK_ID and PANDA_JOB_ID must be set (run by a pilot)", file=sys.stderr)
        return 2
    os.environ["PANDARS_IN_WORKFLOW_JOB"] = "1"
    client = Client(options.server)
    try:
        call = client.get_call(options.task, options.index)
    except Exception as exc:  # noqa: BLE001
        print(f"pandars.runtime: cannot read call {options.index} of work {options.task}: {exc}", file=sys.stderr)
        return 2
    call_view = type("Call", (), {"function": call.function, "serializer": call.serializer, "key": call.key,
                                  "args": call.args})
    result = execute(call_view, os.getcwd(), client, options.task)
    result.index = options.index
    if not result.ok:
        print(f"pandars.runtime: {result.error.type}: {result.error.message}", file=sys.stderr)
        if result.error.traceback:
            print(result.error.traceback, file=sys.stderr)
    try:
        client.put_result(options.job, result)
    except Exception as exc:  # noqa: BLE001
        print(f"pandars.runtime: cannot store the result: {exc}", file=sys.stderr)
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
