"""The committed gRPC stubs are what replay/proto/replay.proto generates today."""

from pathlib import Path

from replay._proto.generate import generate

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto(tmp_path):
    for fresh in generate(tmp_path):
        committed = ROOT / "replay" / "_proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.relative_to(ROOT)} is stale: run `python -m replay._proto.generate`"
        )


def test_every_proto_field_is_commented():
    lines = (ROOT / "replay" / "proto" / "replay.proto").read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "package", "//"))
        if is_field:
            assert lines[number - 1].strip().startswith("//"), f"replay.proto:{number + 1} has no comment: {stripped}"
