"""Build hook: generates the gRPC stubs (pandars/_proto) from the repository's proto/ before the
package is built, so the SDK never carries hand-copied messages. The proto directory is
$PANDARS_PROTO_DIR, else ../../proto next to this file. A source tree without it (an sdist) must
already hold the generated stubs."""

import importlib.util
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStubs(build_py):
    def run(self):
        # Loaded by path: importing the package would need the stubs this generates.
        spec = importlib.util.spec_from_file_location("pandars_codegen", os.path.join(HERE, "src", "pandars", "codegen.py"))
        codegen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(codegen)

        proto_dir = os.environ.get("PANDARS_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
        out_dir = os.path.join(HERE, "src", "pandars", "_proto")
        if os.path.isdir(proto_dir):
            codegen.generate(proto_dir, out_dir)
        elif not os.path.isfile(os.path.join(out_dir, "panda", "server", "v1", "function_pb2.py")):
            raise SystemExit(f"no proto directory at {proto_dir} and no generated stubs; set PANDARS_PROTO_DIR")
        # The generated packages did not exist when the package list was made.
        packages = find_packages(where=os.path.join(HERE, "src"))
        self.packages = self.distribution.packages = packages
        super().run()


def runtime_requirements():
    """The generated stubs check at import that grpcio and protobuf are at least the versions
    that generated them: require those."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return [f"grpcio>={version('grpcio-tools')}", f"protobuf>={version('protobuf')}"]
    except PackageNotFoundError:
        return ["grpcio", "protobuf"]


setup(cmdclass={"build_py": BuildWithStubs}, install_requires=runtime_requirements())
