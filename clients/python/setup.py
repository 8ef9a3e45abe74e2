"""Builds the `shopmesh-api` distribution: generates Python modules from proto/ first.

Every build (wheel, editable, sdist) runs grpcio-tools' protoc over all of proto/**/*.proto into
build/generated/, adds the __init__.py files that make `shopmesh.<svc>.v1` importable packages,
and packages that directory. The .proto files are found, in this order, in $SHOPMESH_PROTO_DIR,
in ./proto (an sdist carries a copy there), or in ../../proto (this repository's contracts).
The gRPC service config generated from them (clients/grpc-service-config.json, `shopmesh
service-config`) ships inside the package as shopmesh/grpc_service_config.json.
"""

import glob
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATED = os.path.join("build", "generated")


def proto_root():
    candidates = [os.environ.get("SHOPMESH_PROTO_DIR"), os.path.join(HERE, "proto"),
                  os.path.join(HERE, "..", "..", "proto")]
    for root in filter(None, candidates):
        if glob.glob(os.path.join(root, "shopmesh", "*", "v*", "*.proto")):
            return os.path.abspath(root)
    sys.exit("shopmesh-api: no .proto files found; set SHOPMESH_PROTO_DIR to the repository's proto/")


def service_config():
    """The generated gRPC service config: beside the protos of an sdist, or in clients/."""
    for path in (os.path.join(HERE, "grpc-service-config.json"), os.path.join(HERE, "..", "grpc-service-config.json")):
        if os.path.isfile(path):
            return os.path.abspath(path)
    sys.exit("shopmesh-api: no grpc-service-config.json (clients/grpc-service-config.json in the repository)")


def generate():
    """Runs protoc (from grpcio-tools, a build requirement) and returns the package names."""
    import grpc_tools
    from grpc_tools import protoc

    root = proto_root()
    out = os.path.join(HERE, GENERATED)
    shutil.rmtree(out, ignore_errors=True)  # a removed .proto must not leave its module behind
    os.makedirs(out)
    protos = sorted(glob.glob(os.path.join(root, "shopmesh", "**", "*.proto"), recursive=True))
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{root}", f"-I{well_known}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        sys.exit(f"shopmesh-api: protoc failed on {root}")

    packages = set()
    for proto in protos:
        parts = os.path.dirname(os.path.relpath(proto, root)).split(os.sep)
        packages.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    for package in packages:
        init = os.path.join(out, *package.split("."), "__init__.py")
        with open(init, "w") as f:
            f.write(f'"""Generated from proto/{package.replace(".", "/")} by protoc; do not edit."""\n')
    # PEP 561: the .pyi files protoc wrote are the package's type information.
    open(os.path.join(out, "shopmesh", "py.typed"), "w").close()
    shutil.copy2(service_config(), os.path.join(out, "shopmesh", "grpc_service_config.json"))
    return sorted(packages)


class SdistWithProtos(sdist):
    """Copies the .proto files into the sdist, so it builds without this repository."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = proto_root()
        for proto in glob.glob(os.path.join(root, "shopmesh", "**", "*.proto"), recursive=True):
            dest = os.path.join(base_dir, "proto", os.path.relpath(proto, root))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(proto, dest)
        shutil.copy2(service_config(), os.path.join(base_dir, "grpc-service-config.json"))


setup(
    packages=generate(),
    package_dir={"": GENERATED},
    package_data={"": ["*.pyi", "py.typed", "grpc_service_config.json"]},
    cmdclass={"sdist": SdistWithProtos},
)
