"""The typed client against the embedded system: tasks, jobs, watch, cache, logs."""

import os
import tempfile

import grpc
import pytest

from pandars import archive, task_spec


def test_submit_watch_and_read_logs(client):
    task_id = client.submit_task(task_spec("pytest-echo", "echo hello-{index}", n_jobs=2, user="t"))
    states = [m.task.status for m in client.watch_task(task_id)]
    assert client.get_task(task_id).status == states[-1]
    jobs = client.list_jobs(task_id)
    assert len(jobs) == 2
    out = b"".join(client.job_log(jobs[0].job_id))
    assert out.startswith(b"hello-")
    assert any(t.task_id == task_id for t in client.list_tasks(name_contains="pytest-echo"))


def test_bad_input_names_the_field(client):
    with pytest.raises(grpc.RpcError) as error:
        client.submit_task(task_spec("bad name!", "true"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in error.value.details()


def test_archives_are_reproducible_and_uploads_content_addressed(client):
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "a.py"), "w") as f:
            f.write("x = 1\n")
        os.makedirs(os.path.join(d, "__pycache__"))
        with open(os.path.join(d, "__pycache__", "a.pyc"), "wb") as f:
            f.write(b"junk")
        data1, sha1 = archive.pack_dir(d)
        os.utime(os.path.join(d, "a.py"), (1, 1))
        data2, sha2 = archive.pack_dir(d)
        assert (data1, sha1) == (data2, sha2), "times and caches do not change the archive"
        assert client.upload_dir(d) == sha1
        assert client.upload_dir(d) == sha1, "a repeat upload is free"
