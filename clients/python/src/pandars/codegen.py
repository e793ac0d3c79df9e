"""Generates the gRPC stubs from the panda protos with grpcio-tools.

Run by the package build (setup.py) and by hand with
``python -m pandars.codegen PROTO_DIR OUT_DIR``. The generated modules import each other as
``panda.<pkg>.v1``; they are rewritten to ``pandars._proto.panda.<pkg>.v1`` so that the stubs
live inside this package and do not clash with any other ``panda`` package.
"""

import os
import re
import sys

_IMPORT = re.compile(r"^from panda\.", re.MULTILINE)


def _protos(proto_dir):
    found = []
    for root, _dirs, files in os.walk(os.path.join(proto_dir, "panda")):
        for name in files:
            if name.endswith(".proto"):
                found.append(os.path.relpath(os.path.join(root, name), proto_dir))
    return sorted(found)


def generate(proto_dir, out_dir):
    """Compiles every ``panda/**/*.proto`` under ``proto_dir`` into ``out_dir``."""
    import grpc_tools  # noqa: PLC0415
    from grpc_tools import protoc  # noqa: PLC0415

    protos = _protos(proto_dir)
    if not protos:
        raise RuntimeError(f"no .proto files under {proto_dir}/panda")
    os.makedirs(out_dir, exist_ok=True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto_dir}")
    for root, _dirs, files in os.walk(out_dir):
        init = os.path.join(root, "__init__.py")
        if not os.path.exists(init):
            with open(init, "w", encoding="utf-8") as f:
                f.write("")
        for name in files:
            if name.endswith((".py", ".pyi")) and name != "__init__.py":
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                fixed = _IMPORT.sub("from pandars._proto.panda.", text)
                if fixed != text:
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(fixed)
    return protos


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m pandars.codegen PROTO_DIR OUT_DIR")
    for proto in generate(sys.argv[1], sys.argv[2]):
        print(proto)
