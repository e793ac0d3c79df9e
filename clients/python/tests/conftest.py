"""Starts the embedded system (`panda up` from the cargo-built binary, free ports, a temporary
data directory) once for the session and tears it down."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pandars.embedded import Embedded  # noqa: E402


@pytest.fixture(scope="session")
def panda():
    # PANDARS_TEST_BUS_URL=amqp://... runs the suite with RabbitMQ as the bus instead of the
    # in-process one (results then travel through the broker).
    bus = os.environ.get("PANDARS_TEST_BUS_URL")
    system = Embedded(local_workers=4, extra_env={"PANDA_BUS__URL": bus} if bus else None)
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture()
def client(panda):
    return panda.client
