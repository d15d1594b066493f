"""A script that fails exits with its error, even with a replay server and insert streams open."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import make_batch
from replay import ReplayClient

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    sys.path.insert(0, {tests!r})
    from conftest import CARTPOLE_SPEC, make_batch
    from replay import ReplayClient, ReplayServer

    server = ReplayServer(CARTPOLE_SPEC, port=0).start()
    client = ReplayClient(server.address)
    client.insert(make_batch(10))
    client.flush()  # the stream stays open: a server handler thread now waits on it
    print(server.address, flush=True)
    sys.stdin.readline()  # the test's own stream (from another process) is open too
    raise RuntimeError("the script failed")
    """
)


def test_a_script_that_raises_with_a_server_and_open_insert_streams_exits_with_its_error(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    outsider = None
    try:
        address = proc.stdout.readline().strip()
        assert address, f"the script did not start its server: {proc.stderr.read()}"
        outsider = ReplayClient(address, retry_for_s=0.1)
        outsider.insert(make_batch(5))
        outsider.flush(timeout=10)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        code = proc.wait(timeout=20)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if outsider is not None:
            outsider.close()
    assert code == 1, stderr
    assert "Traceback" in stderr and "RuntimeError: the script failed" in stderr
