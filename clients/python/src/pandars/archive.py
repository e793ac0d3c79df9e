"""Code archives: a directory packed reproducibly (sorted entries, zero times, no owners: the
same tree always gives the same sha256) as tar.gz, the content address the server's cache uses."""

import gzip
import hashlib
import io
import os
import tarfile

#: Names never packed (caches, version control, virtual environments).
EXCLUDED = {"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".pytest_cache", ".mypy_cache", "node_modules"}


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


def pack_dir(root):
    """Packs the regular files under ``root``; returns ``(bytes, sha256 hex)``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in _entries(root):
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
