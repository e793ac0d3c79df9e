"""How arguments and results travel (documented in the README, "Python SDK").

* ``json`` (preferred): UTF-8 JSON. Arguments are ``{"args": [...], "kwargs": {...}}``. JSON
  turns tuples into lists and dict keys into strings; NaN and infinities are refused.
* ``pickle`` (fallback): ``cloudpickle`` when it is installed (functions, lambdas, local
  classes), else the standard ``pickle``. Both ends need compatible Python and library versions.

A work uses JSON when every call's arguments are JSON, else pickle (``serializer="auto"``, the
default); ``serializer="json"`` makes a non-JSON argument an error. A result is JSON when it can
be, else pickle. A value neither can carry is a ``SerializationError`` naming the argument (or
"return value").
"""

import json
import pickle

try:  # optional: pickles what the standard pickle cannot (lambdas, local functions)
    import cloudpickle as _pickler
except ImportError:  # pragma: no cover - depends on the environment
    _pickler = pickle

SERIALIZERS = ("json", "pickle")


class SerializationError(TypeError):
    """A value cannot be serialized; the message names it."""


def _json(value):
    return json.dumps(value, allow_nan=False, separators=(",", ":"), sort_keys=False).encode("utf-8")


def _check_json(value, what):
    try:
        _json(value)
        return None
    except (TypeError, ValueError) as error:
        return f"{what} is not JSON-serializable ({error})"


def _pickle(value, what):
    try:
        return _pickler.dumps(value, protocol=pickle.DEFAULT_PROTOCOL)
    except Exception as error:  # noqa: BLE001 - every pickling failure is the same problem
        raise SerializationError(f"{what} cannot be serialized: not JSON and not picklable ({type(error).__name__}: {error})") from error


def _describe(args, kwargs):
    for i, value in enumerate(args):
        yield value, f"argument {i} ({type(value).__name__})"
    for name, value in kwargs.items():
        yield value, f"argument {name!r} ({type(value).__name__})"


def json_problem(args, kwargs):
    """Why these arguments are not JSON (naming the first bad one), or None."""
    for value, what in _describe(args, kwargs):
        problem = _check_json(value, what)
        if problem:
            return problem
    return None


def dump_args(args, kwargs, serializer):
    """Serializes one call's arguments with ``serializer`` ("json" or "pickle")."""
    if serializer == "json":
        problem = json_problem(args, kwargs)
        if problem:
            raise SerializationError(problem + "; use serializer='pickle' or 'auto'")
        return _json({"args": list(args), "kwargs": kwargs})
    if serializer == "pickle":
        for value, what in _describe(args, kwargs):
            _pickle(value, what)  # names the bad argument
        return _pickle({"args": list(args), "kwargs": kwargs}, "the arguments")
    raise ValueError(f"serializer must be one of {SERIALIZERS} (got {serializer!r})")


def load_args(data, serializer):
    """The ``(args, kwargs)`` of one call."""
    payload = json.loads(data.decode("utf-8")) if serializer == "json" else pickle.loads(data)  # noqa: S301
    return list(payload.get("args", [])), dict(payload.get("kwargs", {}))


def dump_value(value, what="return value"):
    """A result: ``(bytes, serializer)``, JSON when possible, else pickle."""
    if _check_json(value, what) is None:
        return _json(value), "json"
    return _pickle(value, what), "pickle"


def load_value(data, serializer):
    if serializer == "json":
        return json.loads(data.decode("utf-8"))
    if serializer == "pickle":
        return pickle.loads(data)  # noqa: S301 - results come from the user's own jobs
    raise SerializationError(f"unknown result serializer {serializer!r}")
