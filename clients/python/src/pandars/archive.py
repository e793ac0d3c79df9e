"""Code archives: a directory packed reproducibly (sorted entries, zero times, no owners: the
same tree always gives the same sha256) as tar.gz, the content address the server's cache uses."""

import gzip
import hashlib
import io
import os
import tarfile

#: Names never packed (caches, version control, virtual environments).
EXCLUDED = {"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".pytest_cache", ".mypy_cache", "node_modules"}


#: Where :func:`pack_dir` puts the SDK's own package for works that run in a container image
#: (``extra=[(sdk_dir(), SDK_DIR + "/pandars")]``); the job's PYTHONPATH names it.
SDK_DIR = ".pandars-sdk"


def sdk_dir():
    """The directory of the installed ``pandars`` package (with its generated gRPC stubs)."""
    import pandars  # noqa: PLC0415

    return os.path.dirname(os.path.abspath(pandars.__file__))


def _entries(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue  # links and special files are refused by the cache; leave them out
            yield path, os.path.relpath(path, root).replace(os.sep, "/")


def pack_dir(root, extra=()):
    """Packs the regular files under ``root``, and those under each ``(directory, prefix)`` of
    ``extra`` named ``prefix/...``; returns ``(bytes, sha256 hex)``."""
    entries = [(path, name) for path, name in _entries(root) if not name.startswith(SDK_DIR + "/")]
    for directory, prefix in extra:
        entries.extend((path, f"{prefix}/{name}") for path, name in _entries(directory))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in entries:
            info = tarfile.TarInfo(name)
            info.size = os.path.getsize(path)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0
            with open(path, "rb") as f:
                tar.addfile(info, f)
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    return data, hashlib.sha256(data).hexdigest()
