"""Starts ``panda up`` (every service in one process, the in-process bus, SQLite) on free
loopback ports for examples, tests and the bench, and stops it.

The binary is $PANDA_BIN, else ``panda`` on PATH, else target/{debug,release}/panda of the
repository this file sits in ($CARGO_TARGET_DIR first). Jobs run ``python3 -m pandars.runtime``;
the directory of this interpreter is put first on the services' PATH so that pilots find the
same Python with pandars installed.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

from pandars.client import Client

SERVICES = ("server", "jedi", "harvester", "idds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_panda() -> str:
    for candidate in (os.environ.get("PANDA_BIN"), shutil.which("panda")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.abspath(os.path.join(here, "..", "..", "..", ".."))
    roots = [os.environ.get("CARGO_TARGET_DIR"), os.path.join(repo, "target")]
    for root in filter(None, roots):
        for profile in ("release", "debug"):
            path = os.path.join(root, profile, "panda")
            if os.access(path, os.X_OK):
                return path
    raise FileNotFoundError("cannot find the panda binary: set PANDA_BIN or build it (cargo build -p panda-cli)")


class Embedded:
    """A running ``panda up``; use as a context manager or call ``stop()``."""

    def __init__(self, data_dir: Optional[str] = None, local_workers: int = 4, binary: Optional[str] = None,
                 extra_env: Optional[dict] = None, log_file: Optional[str] = None):
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="pandars-")
        self.data_dir = data_dir or self._tmp.name
        self.binary = binary or find_panda()
        ports = {name: (_free_port(), _free_port()) for name in SERVICES}
        self.server_url = f"http://127.0.0.1:{ports['server'][0]}"
        self.idds_url = f"http://127.0.0.1:{ports['idds'][0]}"
        env = dict(os.environ)
        for name, (grpc_port, admin_port) in ports.items():
            key = name.upper()
            env[f"PANDA_{key}__LISTEN_ADDR"] = f"127.0.0.1:{grpc_port}"
            env[f"PANDA_{key}__ADMIN_ADDR"] = f"127.0.0.1:{admin_port}"
            if name != "server":
                env[f"PANDA_{key}__SERVER_URL"] = self.server_url
        env["PANDA_PILOT__SERVER_URL"] = self.server_url
        env["PANDA_HARVESTER__LOCAL_WORKERS"] = str(local_workers)
        # Pilots stay a while when the queue is empty (long-polling the server), with their warm
        # runtimes, so that the next work of a workflow starts at once.
        env.setdefault("PANDA_PILOT__IDLE_WAIT", "5m")
        env.setdefault("PANDA_TELEMETRY__FORMAT", "json")
        env.setdefault("PANDA_TELEMETRY__FILTER", "warn")
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.update(extra_env or {})
        self.log_path = log_file or os.path.join(self.data_dir, "panda-up.log")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # noqa: S603
            [self.binary, "up", "--data-dir", self.data_dir],
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, start_new_session=True,
        )
        try:
            self._wait_ready(120)
        except BaseException:
            self.stop()
            raise
        self.client = Client(self.server_url, self.idds_url)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"panda up exited with {self.process.returncode}; see {self.log_path}")
            with open(self.log_path, "rb") as f:
                if b"panda is up" in f.read():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"panda up not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def up(**options) -> Embedded:
    """``pandars.embedded.up()``: a running embedded system (see :class:`Embedded`)."""
    return Embedded(**options)
