"""pandars: the Python SDK of panda-rs.

* :class:`Client` — typed gRPC client (tasks, jobs, watch streams, code cache, logs, works,
  idds workflows);
* :func:`workflow`, :func:`work` — Function-as-a-Task decorators; :class:`AsyncResult`;
* :mod:`pandars.runtime` — what jobs run; :mod:`pandars.embedded` — ``panda up`` for examples
  and tests; :mod:`pandars.bench` — the Function-as-a-Task benchmark.
"""

from pandars.client import Client, task_spec
from pandars.faat import Work, Workflow, call_key, work, workflow
from pandars.result import AsyncResult, MapResult, RemoteError, Result, ResultTimeout
from pandars.serialize import SerializationError

__version__ = "0.1.0"
__all__ = [
    "AsyncResult", "Client", "MapResult", "RemoteError", "Result", "ResultTimeout", "SerializationError", "Work",
    "Workflow", "call_key", "task_spec", "work", "workflow",
]
