"""The job side of Function-as-a-Task: ``python -m pandars.runtime --index N``, the command of
every job of a work. It reads its call from the server (GetCall), imports the function from the
code archive the pilot unpacked into the job directory, runs it, and stores the result
(PutResult), which the server keeps and publishes to the caller.

Exit codes: 0 the function returned and its result was stored; 1 the function raised or its
value could not be serialized (a failure result was stored, carrying the exception type, message
and traceback); 2 the call could not be read or the result not stored (the server then stores a
failure result when the job ends).

Environment (set by the pilot): PANDA_SERVER_URL, PANDA_TASK_ID, PANDA_JOB_ID, PANDA_CODE_SHA256.
"""

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pandars.runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=int, required=True, help="the job index (1-based): which call to run")
    parser.add_argument("--task", type=int, default=int(os.environ.get("PANDA_TASK_ID", "0") or 0))
    parser.add_argument("--job", type=int, default=int(os.environ.get("PANDA_JOB_ID", "0") or 0))
    parser.add_argument("--server", default=None, help="server URL (default $PANDA_SERVER_URL)")
    options = parser.parse_args(argv)
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
