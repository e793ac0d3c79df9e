"""The generated gRPC modules (built from proto/ by the package build, see codegen.py)."""

try:
    from pandars._proto.panda.common.v1 import common_pb2
    from pandars._proto.panda.idds.v1 import workflow_pb2, workflow_pb2_grpc
    from pandars._proto.panda.server.v1 import (
        cache_pb2,
        cache_pb2_grpc,
        function_pb2,
        function_pb2_grpc,
        job_pb2,
        job_pb2_grpc,
        logs_pb2,
        logs_pb2_grpc,
        task_pb2,
        task_pb2_grpc,
    )
except ImportError as error:  # pragma: no cover - a source tree without generated stubs
    raise ImportError(
        "pandars' gRPC stubs are missing: install the package (pip install ./clients/python) or run "
        "python -m pandars.codegen proto clients/python/src/pandars/_proto"
    ) from error

__all__ = [
    "cache_pb2", "cache_pb2_grpc", "common_pb2", "function_pb2", "function_pb2_grpc", "job_pb2", "job_pb2_grpc",
    "logs_pb2", "logs_pb2_grpc", "task_pb2", "task_pb2_grpc", "workflow_pb2", "workflow_pb2_grpc",
]
