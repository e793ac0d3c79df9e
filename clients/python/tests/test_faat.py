"""Function-as-a-Task end to end through the embedded system."""

import os
import threading

import pytest

import funcs
from pandars import AsyncResult, RemoteError, ResultTimeout, SerializationError, call_key, workflow
from pandars.faat import WorkflowContext, workflow_context

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture()
def ctx(client):
    """The context a @workflow call sets up: this directory packed and uploaded."""
    sha = client.upload_dir(HERE)
    context = WorkflowContext(client, sha, "pytest", HERE)
    with workflow_context(context):
        yield context


def test_outside_a_workflow_a_work_runs_in_process():
    assert funcs.square(3) == 9
    assert funcs.square(group_kwargs=[{"x": 1}, {"x": 2}]) == [1, 4]


def test_one_call_is_one_job(ctx, client):
    result = funcs.square(7)
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=120) == 49
    assert len(client.list_jobs(result.task_id)) == 1


def test_group_kwargs_is_one_task_with_one_job_per_set(ctx, client):
    points = [{"a": i, "b": 10 * i} for i in range(5)]
    result = funcs.add(group_kwargs=points)
    mapped = result.get(timeout=120)
    assert len(client.list_jobs(result.task_id)) == 5
    assert mapped[{"a": 3, "b": 30}] == 33
    assert mapped[call_key({"a": 4, "b": 40})] == 44
    assert sorted(mapped.values()) == [0, 11, 22, 33, 44]


def test_iteration_yields_each_result_as_it_arrives(ctx):
    result = funcs.square(group_kwargs=[[i] for i in range(4)])
    seen = sorted(r.value for r in result)
    assert seen == [0, 1, 4, 9]
    assert result.get(timeout=10) == [0, 1, 4, 9], "get() lists results in argument order"


def test_a_raising_function_reaches_the_caller_with_type_message_traceback_and_logs(ctx):
    result = funcs.boom(group_kwargs=[{"x": 1}, {"x": 2}, {"x": 3}])
    with pytest.raises(RemoteError) as error:
        result.get(timeout=120)
    e = error.value
    assert e.type == "ZeroDivisionError"
    assert e.message == "cannot handle 2"
    assert "raise ZeroDivisionError" in e.traceback
    assert e.job_id > 0 and e.log_location == f"panda job logs {e.job_id}"
    # The other calls' results are there as partial results.
    assert sorted(result.partial().values()) == [1, 3]


def test_an_unserializable_return_value_is_a_clear_error(ctx):
    with pytest.raises(RemoteError) as error:
        funcs.unserializable().get(timeout=120)
    assert error.value.type == "SerializationError"
    assert "return value" in error.value.message


def test_an_unserializable_argument_is_refused_before_submission(ctx, client):
    before = len(client.list_tasks(limit=1000))
    with pytest.raises(SerializationError) as error:
        funcs.square(group_kwargs=[{"x": 1}, {"x": threading.Lock()}])  # neither JSON nor picklable
    assert "call 1" in str(error.value) and "argument 'x'" in str(error.value), str(error.value)
    assert len(client.list_tasks(limit=1000)) == before, "nothing half-submitted"


def test_a_job_past_its_walltime_fails_the_call(ctx):
    with pytest.raises(RemoteError) as error:
        funcs.sleepy(60).get(timeout=120)
    assert error.value.type == "JobFailed"
    assert error.value.job_id > 0


def test_a_crashed_worker_gets_a_failure_result(ctx):
    with pytest.raises(RemoteError) as error:
        funcs.crash().get(timeout=120)
    assert error.value.type == "JobFailed"
    assert "exit code 7" in error.value.message


def test_a_killed_work_gets_failure_results(ctx, client):
    result = funcs.sleepy(group_kwargs=[{"seconds": 1.5}] + [[30 + i] for i in range(3)])
    client.kill_task(result.task_id)
    assert result.wait(timeout=120), "no AsyncResult waits forever"
    assert all(e.type in ("JobCancelled", "JobFailed", "TaskAborted") for e in result.failures())
    assert len(result.failures()) == 4


def test_timeout_gives_the_partial_results(ctx):
    result = funcs.square(group_kwargs=[[2]])
    with pytest.raises(ResultTimeout):
        AsyncResult(result.client, result.task_id, result.keys + ["never"], stream=True).get(timeout=0.5)
    assert result.get(timeout=120) == [4]


def test_missed_messages_are_found_by_asking_the_server(ctx):
    submitted = funcs.square(group_kwargs=[[i] for i in range(3)])
    submitted.close()

    class Deaf(AsyncResult):
        def _on_stream_message(self, message):
            pass  # every pushed message is lost

    deaf = Deaf(submitted.client, submitted.task_id, submitted.keys, poll_interval=0.5)
    assert deaf.get(timeout=120) == [0, 1, 4]
    # A fresh AsyncResult of the same work reads the durable results.
    again = AsyncResult.attach(submitted.client, submitted.task_id)
    assert again.get(timeout=30) == [0, 1, 4]


def test_the_job_runs_in_the_unpacked_code(ctx):
    answer = funcs.where().get(timeout=120)
    assert answer["cwd_has_funcs"] is True and int(answer["job"]) > 0


@workflow
def driver(n):
    return sum(funcs.square(group_kwargs=[[i] for i in range(n)]).get(timeout=120))


@workflow(local=False)
def remote_driver(n):
    return sum(funcs.square(group_kwargs=[[i] for i in range(n)]).get(timeout=120))


def test_a_local_workflow_uploads_its_code_and_runs_here(client):
    assert driver(4, client=client) == 0 + 1 + 4 + 9


def test_a_remote_workflow_runs_its_driver_as_a_job(client):
    result = remote_driver(3, client=client)
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=180) == 0 + 1 + 4


def test_results_are_pushed_without_asking_the_server(ctx):
    submitted = funcs.square(group_kwargs=[[i] for i in range(3)])
    submitted.close()

    class Counting(AsyncResult):
        refreshes = 0

        def refresh(self):
            Counting.refreshes += 1
            super().refresh()

    pushed = Counting(submitted.client, submitted.task_id, submitted.keys, poll_interval=1000)
    assert pushed.get(timeout=120) == [0, 1, 4]
    assert Counting.refreshes == 0, "every result came over the stream"


def _statuses(client, task_id, timeout=60):
    """The task's job states once every job ended: a result is stored (and reaches ``get()``)
    before the pilot reports its job's end, so the states may lag the results briefly."""
    import time

    from pandars.client import pb

    final = {"JOB_STATUS_FINISHED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED", "JOB_STATUS_CLOSED"}
    deadline = time.monotonic() + timeout
    while True:
        statuses = sorted(pb.common.JobStatus.Name(j.status) for j in client.list_jobs(task_id))
        if set(statuses) <= final or time.monotonic() > deadline:
            return statuses
        time.sleep(0.1)


def test_a_warm_runtime_runs_several_jobs_of_a_work(ctx, client):
    result = funcs.pid(group_kwargs=[[i] for i in range(24)])
    values = result.get(timeout=120)
    assert [v["i"] for v in values] == list(range(24))
    assert len({v["job"] for v in values}) == 24, "one job per call, each with its own id"
    pids = {v["pid"] for v in values}
    # At most one interpreter per pilot (4 local pilots), not one per job.
    assert len(pids) <= 4, pids
    assert _statuses(client, result.task_id) == ["JOB_STATUS_FINISHED"] * 24


def test_a_raising_function_in_a_warm_runtime_fails_only_its_job(ctx, client):
    result = funcs.boom(group_kwargs=[{"x": x} for x in range(1, 9)])
    with pytest.raises(RemoteError) as error:
        result.get(timeout=120)
    assert error.value.type == "ZeroDivisionError" and not error.value.others
    assert sorted(result.partial().values()) == [1, 3, 4, 5, 6, 7, 8]
    statuses = _statuses(client, result.task_id)
    assert statuses.count("JOB_STATUS_FAILED") == 1 and statuses.count("JOB_STATUS_FINISHED") == 7, statuses
    from pandars.client import pb

    failed = [j.job_id for j in client.list_jobs(result.task_id) if j.status == pb.common.JOB_STATUS_FAILED]
    assert failed == [error.value.job_id]


def test_a_runtime_that_dies_fails_only_the_job_it_was_running(ctx, client):
    result = funcs.maybe_crash(group_kwargs=[[x] for x in range(1, 7)])
    with pytest.raises(RemoteError) as error:
        result.get(timeout=120)
    assert error.value.type == "JobFailed" and "exit code 9" in error.value.message, error.value.message
    assert not error.value.others, "the other calls of the dead runtime ran again in a fresh one"
    assert sorted(result.partial().values()) == [1, 3, 4, 5, 6]


def test_waiting_pilots_take_the_next_work_at_once_in_their_warm_runtimes(ctx):
    # Pilots long-poll the server while the queue is empty (embedded: idle_wait), and keep their
    # runtime: one work after the other runs in the same few interpreters. A pilot that stopped
    # on an empty queue, or a process per job, would show a new pid per work.
    pids = [funcs.pid(i).get(timeout=120)["pid"] for i in range(8)]
    assert len(set(pids)) <= 4, pids


def test_a_work_can_opt_out_of_the_warm_runtime(ctx):
    pids = funcs.cold_pid(group_kwargs=[[i] for i in range(3)]).get(timeout=120)
    assert len(set(pids)) == 3, "a process per job"
