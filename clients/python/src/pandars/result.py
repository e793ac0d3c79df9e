"""AsyncResult: the results of one work (one task, one job per call), as they arrive.

Results are pushed by the server's WatchResults stream (fed by the bus, filtered by the work's
task id) and read on a background thread. Whatever the stream misses (a broken connection, a
message lost) is found by asking the server for the stored results (ListResults): when the
stream breaks, when nothing arrived for ``poll_interval`` seconds, and once more before a
timeout is reported. Every result is durable on the server, so a fresh AsyncResult for the same
work (``AsyncResult.attach``) sees them all too.
"""

import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import grpc

from pandars.serialize import load_value


class RemoteError(Exception):
    """A call failed remotely: the function raised, its result could not be serialized, or its
    job failed, was killed or lost before it stored a result."""

    def __init__(self, key, job_id, type_name, message, traceback, log_location, task_id=0, others=()):
        self.key = key
        self.job_id = job_id
        self.type = type_name
        self.message = message
        self.traceback = traceback
        self.log_location = log_location
        self.task_id = task_id
        #: The other failed calls of the same work (RemoteError each).
        self.others = list(others)
        more = f" (and {len(self.others)} more failed calls)" if self.others else ""
        super().__init__(
            f"{type_name}: {message} [task {task_id}, job {job_id}, key {key!r}; logs: {log_location}]{more}"
            + (f"\nremote traceback:\n{traceback}" if traceback else "")
        )


class ResultTimeout(TimeoutError):
    """Not every result arrived in time; ``partial`` holds those that did."""

    def __init__(self, message, partial):
        super().__init__(message)
        self.partial = partial


class Result:
    """One call's outcome."""

    __slots__ = ("key", "index", "job_id", "ok", "value", "error")

    def __init__(self, message):
        self.key = message.key
        self.index = message.index
        self.job_id = message.job_id
        self.ok = message.ok
        self.value = load_value(message.value, message.serializer) if message.ok else None
        self.error = None
        if not message.ok:
            e = message.error
            self.error = RemoteError(self.key, self.job_id, e.type, e.message, e.traceback, e.log_location,
                                     message.task_id)

    def __repr__(self):
        return f"Result(key={self.key!r}, ok={self.ok}, value={self.value!r}, error={self.error!r})"


class MapResult(dict):
    """``{key: value}`` of a work's successful calls; also indexable by the argument set itself
    (``results[{"x": 1}]``), converted to its key."""

    def __getitem__(self, item):
        if not isinstance(item, str):
            from pandars.faat import call_key  # noqa: PLC0415

            item = call_key(item)
        return super().__getitem__(item)

    def get_result(self, args=None, key=None, default=None):
        try:
            return self[key if key is not None else args]
        except KeyError:
            return default


class AsyncResult:
    """The results of a work. ``get()`` waits for all of them (raising ``RemoteError`` when a
    call failed, ``ResultTimeout`` when time ran out); ``wait()`` only waits; iterating yields
    each ``Result`` as it arrives; ``partial()`` gives the successes so far."""

    def __init__(self, client, task_id, keys, map_results=False, single=False, poll_interval=5.0, stream=True):
        self.client = client
        self.task_id = task_id
        self.keys: List[str] = list(keys)
        self.map_results = map_results
        self.single = single
        self.poll_interval = poll_interval
        self._by_index: Dict[int, Result] = {}
        self._arrivals: List[Result] = []
        self._cond = threading.Condition()
        self._stream_broken = not stream
        self._stop = threading.Event()
        self._call = None
        self._last_progress = time.monotonic()
        if stream:
            self._thread = threading.Thread(target=self._follow, name=f"pandars-results-{task_id}", daemon=True)
            self._thread.start()

    @classmethod
    def attach(cls, client, task_id, map_results=False):
        """An AsyncResult for an existing work (the keys come from the stored calls)."""
        _results, n_calls = client.list_results(task_id)
        keys = [client.get_call(task_id, i).key for i in range(1, n_calls + 1)]
        return cls(client, task_id, keys, map_results=map_results, single=n_calls == 1 and not map_results)

    # --- arrival -----------------------------------------------------------------------------
    def _accept(self, message):
        result = Result(message)
        with self._cond:
            known = self._by_index.get(result.index)
            if known is not None and (known.ok or not result.ok):
                return
            self._by_index[result.index] = result
            self._arrivals.append(result)
            self._last_progress = time.monotonic()
            self._cond.notify_all()

    def _follow(self):
        try:
            self._call = self.client.watch_results(self.task_id)
            for message in self._call:
                if self._stop.is_set():
                    return
                self._on_stream_message(message)
        except grpc.RpcError:
            pass
        finally:
            with self._cond:
                if len(self._by_index) < len(self.keys):
                    self._stream_broken = True
                self._cond.notify_all()

    def _on_stream_message(self, message):
        self._accept(message)

    def refresh(self):
        """Asks the server for the stored results (the fallback for missed messages)."""
        results, _n = self.client.list_results(self.task_id)
        for message in results:
            self._accept(message)
        with self._cond:
            self._last_progress = time.monotonic()

    # --- waiting -----------------------------------------------------------------------------
    def done(self) -> bool:
        with self._cond:
            return len(self._by_index) >= len(self.keys)

    def _wait_until(self, predicate, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                if predicate():
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                quiet = now - self._last_progress
                need_poll = self._stream_broken or quiet >= self.poll_interval
                if not need_poll:
                    slice_ = self.poll_interval - quiet
                    if deadline is not None:
                        slice_ = min(slice_, deadline - now)
                    self._cond.wait(max(slice_, 0.001))
                    continue
            self.refresh()
            with self._cond:
                if predicate():
                    return True
                if self._stream_broken:
                    wait = 0.5 if deadline is None else min(0.5, max(deadline - time.monotonic(), 0))
                    self._cond.wait(wait)
        # Time is up: one last look at what the server holds.
        self.refresh()
        with self._cond:
            return predicate()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every call has a result (success or failure); False on timeout."""
        return self._wait_until(lambda: len(self._by_index) >= len(self.keys), timeout)

    def failures(self) -> List[RemoteError]:
        with self._cond:
            return [r.error for r in self._by_index.values() if not r.ok]

    def partial(self) -> Dict[str, Any]:
        """The successful results so far, ``{key: value}``."""
        with self._cond:
            return MapResult({r.key: r.value for r in sorted(self._by_index.values(), key=lambda r: r.index) if r.ok})

    def get(self, timeout: Optional[float] = None):
        """All results: the value (one call), the list in argument order, or with
        ``map_results=True`` a ``MapResult`` {key: value}. Raises ``RemoteError`` (the first
        failed call, the others in ``.others``) or ``ResultTimeout``."""
        if not self.wait(timeout):
            partial = self.partial()
            raise ResultTimeout(
                f"work {self.task_id}: {len(self._by_index)} of {len(self.keys)} results after {timeout}s",
                partial,
            )
        failures = sorted(self.failures(), key=lambda e: self.keys.index(e.key) if e.key in self.keys else 0)
        if failures:
            first = failures[0]
            raise RemoteError(first.key, first.job_id, first.type, first.message, first.traceback,
                              first.log_location, self.task_id, failures[1:])
        self.close()
        with self._cond:
            ordered = [self._by_index[i].value for i in sorted(self._by_index)]
            if self.map_results:
                return MapResult({self._by_index[i].key: self._by_index[i].value for i in sorted(self._by_index)})
        if self.single:
            return ordered[0]
        return ordered

    def __iter__(self) -> Iterator[Result]:
        """Each call's Result in arrival order, blocking until the next arrives."""
        seen = 0
        while True:
            with self._cond:
                if seen < len(self._arrivals):
                    result = self._arrivals[seen]
                    seen += 1
                else:
                    result = None
                    if len(self._by_index) >= len(self.keys) and seen >= len(self._arrivals):
                        return
            if result is not None:
                yield result
                continue
            self._wait_until(lambda: len(self._arrivals) > seen, None)

    def close(self):
        """Stops following the stream (stored results stay on the server)."""
        self._stop.set()
        if self._call is not None:
            self._call.cancel()

    def __repr__(self):
        return f"AsyncResult(task_id={self.task_id}, {len(self._by_index)}/{len(self.keys)} results)"
