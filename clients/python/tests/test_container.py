"""Works with a container image, end to end: an embedded system whose local queue declares
apptainer and whose pilots find a fake `apptainer` first on their PATH
(services/pilot/tests/fixtures/containers/apptainer: it parses the real command line for the
subset the pilot uses, records each call in record.jsonl next to itself and runs the command on
the host with the environment a container would get). No container engine runs on the machines
these tests run on."""

import json
import os
import sys

import pytest

import funcs
from pandars.embedded import Embedded
from pandars.faat import WorkflowContext, workflow_context

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "..", "..", "..", "services", "pilot", "tests", "fixtures", "containers", "apptainer")
IMAGE = "docker://python:3.11-slim"


@pytest.fixture(scope="module")
def contained(tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp("fake-bin")
    os.symlink(os.path.abspath(FAKE), bin_dir / "apptainer")
    queues = bin_dir / "queues.yaml"
    queues.write_text("queues:\n  local:\n    max_workers: 2\n    containers: [apptainer]\n    plugin: { type: local }\n")
    path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    system = Embedded(local_workers=2, extra_env={"PATH": path, "PANDA_HARVESTER__QUEUE_CONFIG": str(queues)})
    try:
        yield system, bin_dir
    finally:
        system.stop()


def _records(bin_dir):
    path = bin_dir / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(system, work, n):
    client = system.client
    context = WorkflowContext(client, client.upload_dir(HERE), "image", HERE)
    with workflow_context(context):
        result = work(group_kwargs=[[i] for i in range(n)])
        return result, result.get(timeout=180)


def _check_values(values, n):
    assert [v["square"] for v in values] == [i * i for i in range(n)]
    for v in values:
        assert v["image"] == IMAGE
        # pandars came with the code archive, not from the interpreter's site-packages.
        assert os.sep.join(["", ".pandars-sdk", "pandars", "__init__.py"]) in v["pandars"], v


def test_a_work_with_an_image_runs_in_a_warm_runtime_inside_it(contained):
    system, bin_dir = contained
    result, values = _run(system, funcs.in_image, 4)
    _check_values(values, 4)
    task = system.client.get_task(result.task_id)
    assert task.spec.container_image == IMAGE
    runs = [r for r in _records(bin_dir) if "--serve" in r["command"][-1]]
    assert runs, _records(bin_dir)
    assert len(runs) <= 2, "at most one warm runtime per pilot"
    for run in runs:
        assert run["image"] == IMAGE and run["cleanenv"] is True
        assert run["env"]["PYTHONPATH"] == ".pandars-sdk"
        assert run["pwd"] == run["env"]["PANDA_WORK_DIR"]
        assert run["binds"][0] == f"{run['pwd']}:{run['pwd']}"


def test_a_cold_work_with_an_image_runs_each_job_inside_it(contained):
    system, bin_dir = contained
    result, values = _run(system, funcs.in_image_cold, 2)
    _check_values(values, 2)
    jobs = [r for r in _records(bin_dir) if "--index" in r["command"][-1]]
    assert len(jobs) == 2, _records(bin_dir)
    for job in jobs:
        assert job["image"] == IMAGE
        assert job["pwd"].endswith(f"PanDA_Pilot-{job['env']['PANDA_JOB_ID']}")
        assert job["env"]["PANDA_TASK_ID"] == str(result.task_id)
    assert {v["cwd"] for v in values} == {job["pwd"] for job in jobs}, "each job ran in its bound directory"
