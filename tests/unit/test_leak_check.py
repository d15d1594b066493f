"""tests/conftest.py's check for leaked ShardedReplay watchers: it fails a passing test that leaves
one running, and stays quiet after a test whose body already failed (its failure is the news)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

LEAKING = """
import threading

from conftest import DISCOVERY_THREAD

stop = threading.Event()


def leak():
    threading.Thread(target=stop.wait, args=(60,), name=DISCOVERY_THREAD, daemon=True).start()


def test_failing_body_that_leaks():
    leak()
    assert False, "the body's own failure"


def test_passing_body_that_leaks():
    leak()


def test_zz_end_the_leaked_threads():
    stop.set()
"""


def test_a_leak_fails_a_passing_test_and_is_not_reported_after_a_failing_one(tmp_path):
    conftest = (TESTS / "conftest.py").read_text()
    assert "\nLEAK_WAIT_S = 10.0\n" in conftest
    (tmp_path / "conftest.py").write_text(conftest.replace("\nLEAK_WAIT_S = 10.0\n", "\nLEAK_WAIT_S = 0.5\n"))
    (tmp_path / "test_leaking.py").write_text(LEAKING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert "FAILED test_leaking.py::test_failing_body_that_leaks" in out, out
    assert "ERROR test_leaking.py::test_passing_body_that_leaks" in out, out
    assert "ERROR test_leaking.py::test_failing_body_that_leaks" not in out, out
    assert "error at teardown of test_failing_body_that_leaks" not in out.lower(), out
    assert "1 failed, 2 passed, 1 error" in out, out
