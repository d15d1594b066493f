"""`dying_with_parent`: children that get SIGTERM when their parent dies are started through
util-linux's setpriv (no Python between fork and exec, unsafe beside gRPC's threads), and through a
preexec_fn only where setpriv is missing."""

from __future__ import annotations

import shutil

from system.local import dying_with_parent
from system.local.signals import terminate_with_parent


def test_with_setpriv_the_command_runs_under_it_and_no_preexec_fn_is_given():
    command, popen = dying_with_parent(["redis-server", "-"])
    assert command == [shutil.which("setpriv"), "--pdeathsig", "SIGTERM", "--", "redis-server", "-"]
    assert popen == {}


def test_without_setpriv_the_command_is_unchanged_and_a_preexec_fn_sets_the_signal(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no setpriv on it
    command, popen = dying_with_parent(["redis-server", "-"])
    assert command == ["redis-server", "-"]
    assert popen == {"preexec_fn": terminate_with_parent}
