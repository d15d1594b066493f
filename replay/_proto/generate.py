"""Regenerates the gRPC stubs in this folder from replay/proto/replay.proto.

Run `python -m replay._proto.generate` after editing the proto; tests/unit/test_proto_current.py
fails while the committed stubs differ from what this produces.
"""

from __future__ import annotations

import pathlib
import sys

PROTO_DIR = pathlib.Path(__file__).resolve().parent.parent / "proto"


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Writes replay/_proto/replay_pb2{,_grpc}.py under `out_root`; returns the files written."""
    from grpc_tools import protoc  # dev-time dependency only

    # The virtual path maps the proto to replay/_proto so generated imports read
    # `from replay._proto import replay_pb2`.
    args = [
        "protoc",
        f"-Ireplay/_proto={PROTO_DIR}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        "replay/_proto/replay.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR / 'replay.proto'}")
    out = out_root / "replay" / "_proto"
    return [out / "replay_pb2.py", out / "replay_pb2_grpc.py"]


if __name__ == "__main__":
    root = pathlib.Path(__file__).resolve().parents[2]
    for path in generate(root):
        print(f"wrote {path.relative_to(root)}")
    sys.exit(0)
