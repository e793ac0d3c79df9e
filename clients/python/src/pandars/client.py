"""A typed client for the panda-rs services over gRPC: tasks, jobs, watch streams, code cache,
job logs, Function-as-a-Task works and their results, and idds workflows.

Messages are the generated protobuf classes (``pandars.client.pb``); methods take plain Python
values where that is simpler and return the messages. Errors are ``grpc.RpcError`` with the
server's status code and a message naming the bad field.
"""

import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc

from pandars import archive
from pandars._stubs import (
    cache_pb2,
    cache_pb2_grpc,
    common_pb2,
    function_pb2,
    function_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)


class pb:  # noqa: N801 - a namespace of the generated modules
    """The generated message modules."""

    common = common_pb2
    task = task_pb2
    job = job_pb2
    cache = cache_pb2
    logs = logs_pb2
    function = function_pb2
    workflow = workflow_pb2


#: Upload chunk size (the server takes up to 4 MiB per message).
CHUNK = 1024 * 1024
#: Default server address (panda up's default).
DEFAULT_SERVER = "http://127.0.0.1:50051"
DEFAULT_IDDS = "http://127.0.0.1:50054"


def _target(url: str) -> str:
    for prefix in ("http://", "grpc://"):
        if url.startswith(prefix):
            return url[len(prefix):].rstrip("/")
    if url.startswith("https://"):
        raise ValueError(f"{url}: TLS endpoints are not supported by this client yet; use http://")
    return url


def server_url() -> str:
    """The server address: $PANDA_SERVER_URL (set in jobs by the pilot), else panda up's default."""
    return os.environ.get("PANDA_SERVER_URL") or os.environ.get("PANDA_SERVER") or DEFAULT_SERVER


class Client:
    """Connections to the server (and optionally idds). Cheap to share between threads."""

    def __init__(self, server: Optional[str] = None, idds: Optional[str] = None, timeout: float = 60.0):
        self.server = server or server_url()
        self.idds_url = idds or os.environ.get("PANDA_IDDS_URL") or DEFAULT_IDDS
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        self._channel = grpc.insecure_channel(_target(self.server), options=options)
        self.tasks = task_pb2_grpc.TaskServiceStub(self._channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self._channel)
        self.cache = cache_pb2_grpc.CacheServiceStub(self._channel)
        self.logs = logs_pb2_grpc.LogServiceStub(self._channel)
        self.functions = function_pb2_grpc.FunctionServiceStub(self._channel)
        self._idds_channel = None
        self._workflows = None

    def close(self) -> None:
        self._channel.close()
        if self._idds_channel is not None:
            self._idds_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- tasks -------------------------------------------------------------------------------
    def submit_task(self, spec: "task_pb2.TaskSpec", idempotency_key: str = "") -> int:
        """Submits a task; returns its id."""
        request = task_pb2.SubmitTaskRequest(spec=spec, idempotency_key=idempotency_key)
        return self.tasks.SubmitTask(request, timeout=self.timeout).task_id

    def get_task(self, task_id: int) -> "task_pb2.Task":
        return self.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id), timeout=self.timeout).task

    def list_tasks(self, user: str = "", limit: int = 100, name_contains: str = "") -> List["task_pb2.Task"]:
        request = task_pb2.ListTasksRequest(user=user, limit=limit, name_contains=name_contains)
        return list(self.tasks.ListTasks(request, timeout=self.timeout).tasks)

    def kill_task(self, task_id: int) -> "task_pb2.Task":
        return self.tasks.KillTask(task_pb2.KillTaskRequest(task_id=task_id), timeout=self.timeout).task

    def watch_task(self, task_id: int) -> Iterator["task_pb2.WatchTaskResponse"]:
        """The task's snapshot, then one message per change, until it ends."""
        return self.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))

    # --- jobs --------------------------------------------------------------------------------
    def list_jobs(self, task_id: int = 0, limit: int = 1000) -> List["job_pb2.Job"]:
        request = job_pb2.ListJobsRequest(task_id=task_id, limit=limit)
        return list(self.jobs.ListJobs(request, timeout=self.timeout).jobs)

    def show_job(self, job_id: int) -> "job_pb2.Job":
        return self.jobs.ShowJob(job_pb2.ShowJobRequest(job_id=job_id), timeout=self.timeout).job

    def kill_job(self, job_id: int):
        return self.jobs.KillJob(job_pb2.KillJobRequest(job_id=job_id), timeout=self.timeout)

    def watch_job(self, job_id: int) -> Iterator["job_pb2.WatchJobResponse"]:
        return self.jobs.WatchJob(job_pb2.WatchJobRequest(job_id=job_id))

    def job_log(self, job_id: int, stream: str = "stdout", follow: bool = False) -> Iterator[bytes]:
        """A job's stdout or stderr as stored; with ``follow`` until the job ended."""
        kind = {"stdout": logs_pb2.LOG_STREAM_STDOUT, "stderr": logs_pb2.LOG_STREAM_STDERR}[stream]
        request = logs_pb2.ReadJobLogRequest(job_id=job_id, stream=kind, follow=follow)
        for message in self.logs.ReadJobLog(request):
            yield message.data

    # --- code cache --------------------------------------------------------------------------
    def upload_archive(self, data: bytes, sha256: str, uploader: str = "") -> str:
        """Stores a tar.gz in the cache unless it holds it already; returns its sha256."""
        stat = self.cache.StatArchive(cache_pb2.StatArchiveRequest(sha256=sha256), timeout=self.timeout)
        if stat.HasField("archive"):
            return sha256

        def parts():
            header = cache_pb2.UploadHeader(sha256=sha256, size_bytes=len(data), uploader=uploader[:200])
            yield cache_pb2.UploadArchiveRequest(header=header)
            for start in range(0, len(data), CHUNK):
                yield cache_pb2.UploadArchiveRequest(chunk=data[start:start + CHUNK])

        self.cache.UploadArchive(parts(), timeout=max(self.timeout, 600))
        return sha256

    def upload_dir(self, path: str, uploader: str = "", with_sdk: bool = False) -> str:
        """Packs ``path`` reproducibly and uploads it (content-addressed: a repeat is free).
        ``with_sdk`` adds this SDK's own ``pandars`` package as ``.pandars-sdk/pandars`` (for
        jobs running in a container image that does not have it)."""
        extra = [(archive.sdk_dir(), archive.SDK_DIR + "/pandars")] if with_sdk else []
        data, sha256 = archive.pack_dir(path, extra)
        return self.upload_archive(data, sha256, uploader)

    # --- Function-as-a-Task ------------------------------------------------------------------
    def submit_work(
        self,
        spec: "task_pb2.TaskSpec",
        function: str,
        serializer: str,
        calls: Sequence[Tuple[str, bytes]],
        idempotency_key: str = "",
        warm_command: str = "",
    ) -> int:
        """One task with one job per call (key, serialized arguments), stored all at once.
        ``warm_command`` lets pilots run several of its jobs in one runtime process."""
        request = function_pb2.SubmitWorkRequest(
            spec=spec,
            function=function,
            serializer=serializer,
            calls=[function_pb2.FunctionCall(key=key, args=args) for key, args in calls],
            idempotency_key=idempotency_key,
            warm_command=warm_command,
        )
        return self.functions.SubmitWork(request, timeout=max(self.timeout, 300)).task_id

    def get_call(self, task_id: int, index: int) -> "function_pb2.GetCallResponse":
        return self.functions.GetCall(function_pb2.GetCallRequest(task_id=task_id, index=index), timeout=self.timeout)

    def get_calls(self, task_id: int, indexes: Sequence[int]) -> "function_pb2.GetCallsResponse":
        """Several calls of a work at once (in the order of ``indexes``)."""
        request = function_pb2.GetCallsRequest(task_id=task_id, indexes=list(indexes))
        return self.functions.GetCalls(request, timeout=self.timeout)

    def put_results(self, results: Sequence[Tuple[int, "function_pb2.FunctionResult"]]) -> list:
        """Stores several (job id, result) pairs in one transaction; one PutResultOutcome each
        (``code`` 0 when accepted, ``stored`` False when a success was already there)."""
        request = function_pb2.PutResultsRequest(
            results=[function_pb2.PutResultRequest(job_id=job_id, result=result) for job_id, result in results])
        return list(self.functions.PutResults(request, timeout=self.timeout).outcomes)

    def put_result(self, job_id: int, result: "function_pb2.FunctionResult") -> bool:
        request = function_pb2.PutResultRequest(job_id=job_id, result=result)
        return self.functions.PutResult(request, timeout=self.timeout).stored

    def list_results(self, task_id: int) -> Tuple[List["function_pb2.FunctionResult"], int]:
        """The stored results of a work, and its number of calls."""
        answer = self.functions.ListResults(function_pb2.ListResultsRequest(task_id=task_id), timeout=self.timeout)
        return list(answer.results), answer.n_calls

    def watch_results(self, task_id: int) -> Iterator["function_pb2.FunctionResult"]:
        """Stored results, then each new one as it is stored, until every call has one."""
        return self.functions.WatchResults(function_pb2.WatchResultsRequest(task_id=task_id))

    # --- idds workflows ----------------------------------------------------------------------
    @property
    def workflows(self):
        if self._workflows is None:
            self._idds_channel = grpc.insecure_channel(_target(self.idds_url))
            self._workflows = workflow_pb2_grpc.WorkflowServiceStub(self._idds_channel)
        return self._workflows

    def submit_workflow(self, text: str, language: int = 0, user: str = "", name: str = "") -> int:
        """Submits a workflow document (YAML by default); returns its id."""
        language = language or workflow_pb2.WORKFLOW_LANGUAGE_NATIVE
        document = workflow_pb2.WorkflowDocument(language=language, text=text, user=user, name=name)
        request = workflow_pb2.SubmitWorkflowRequest(document=document)
        return self.workflows.SubmitWorkflow(request, timeout=self.timeout).workflow_id

    def get_workflow(self, workflow_id: int):
        request = workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id)
        return self.workflows.GetWorkflow(request, timeout=self.timeout).workflow

    def watch_workflow(self, workflow_id: int) -> Iterator:
        return self.workflows.WatchWorkflow(workflow_pb2.WatchWorkflowRequest(workflow_id=workflow_id))


def task_spec(
    name: str,
    command: str,
    n_jobs: int = 1,
    user: str = "",
    environment: Optional[Dict[str, str]] = None,
    code_sha256: str = "",
    cores: int = 1,
    memory_mb: int = 0,
    walltime_seconds: int = 0,
    queues: Iterable[str] = (),
    priority: int = 0,
    max_attempts: Optional[int] = None,
    container_image: str = "",
) -> "task_pb2.TaskSpec":
    """A TaskSpec for a task without input datasets; ``container_image`` (empty: none) is the
    image every job runs in."""
    resources = common_pb2.Resources(cores=cores, memory_mb=memory_mb, walltime_seconds=walltime_seconds)
    split = task_pb2.SplitRules()
    if max_attempts is not None:
        split.max_attempts = max_attempts
    return task_pb2.TaskSpec(
        name=name,
        user=user,
        command=command,
        n_jobs=n_jobs,
        resources=resources,
        environment=environment or {},
        code_sha256=code_sha256,
        queues=list(queues),
        priority=priority,
        split=split,
        container_image=container_image,
    )
