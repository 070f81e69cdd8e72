"""Python stubs for the vecrec gRPC API, generated from proto/ on demand.

Shared by scripts/query.py and tests/python/grpc_client_test.py, so the
clients never run against stale generated code.
"""

import importlib
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILE = PROTO_ROOT / "vecrec/v1/vecrec.proto"


def load_stubs(out_dir: str):
    """Generates the stubs into out_dir and imports (vecrec_pb2, vecrec_pb2_grpc)."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_FILE),
    ])
    if rc != 0:
        raise SystemExit(f"error: protoc failed on {PROTO_FILE} (exit {rc})")
    sys.path.insert(0, out_dir)
    return (importlib.import_module("vecrec.v1.vecrec_pb2"),
            importlib.import_module("vecrec.v1.vecrec_pb2_grpc"))
