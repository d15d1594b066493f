"""Children that die with their parent: `dying_with_parent` (redis-server, benchmark runs) and the
browsers' launcher scripts start them through util-linux's `setpriv --pdeathsig` (no Python between
fork and exec, unsafe beside gRPC's threads) when a setpriv that takes it is found (probed once),
and fall back otherwise: a prctl preexec_fn, or for Chromium an unchanged executable."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import tempfile

import pytest

from actors import browser
from replay import pdeathsig_setpriv
from system.local import dying_with_parent
from system.local.signals import terminate_with_parent


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch, tmp_path):
    """Each test probes its own PATH, writes launchers under its own temporary folder."""
    pdeathsig_setpriv.cache_clear()
    monkeypatch.setattr(browser, "_launchers", {})
    monkeypatch.setattr(browser, "_warned_no_setpriv", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    yield
    pdeathsig_setpriv.cache_clear()


def fake_setpriv(folder, body: str) -> None:
    """A `setpriv` on `folder` that runs the shell `body` (an old one that rejects --pdeathsig)."""
    folder.mkdir(exist_ok=True)
    script = folder / "setpriv"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)


needs_setpriv = pytest.mark.skipif(
    pdeathsig_setpriv() is None, reason="no setpriv with --pdeathsig here (util-linux < 2.33 or missing)"
)


@needs_setpriv
def test_with_setpriv_the_command_runs_under_it_and_no_preexec_fn_is_given():
    setpriv = pdeathsig_setpriv()
    assert os.path.isabs(setpriv)
    command, popen = dying_with_parent(["redis-server", "-"])
    assert command == [setpriv, "--pdeathsig", "SIGTERM", "--", "redis-server", "-"]
    assert popen == {}


def test_without_setpriv_the_command_is_unchanged_and_a_preexec_fn_sets_the_signal(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no setpriv on it
    command, popen = dying_with_parent(["redis-server", "-"])
    assert command == ["redis-server", "-"]
    assert popen == {"preexec_fn": terminate_with_parent}


def test_a_setpriv_too_old_for_pdeathsig_is_not_used(monkeypatch, tmp_path):
    """util-linux < 2.33 (RHEL 8, Ubuntu 18.04) has setpriv but not --pdeathsig: every start
    through it would fail, so the preexec_fn fallback is used instead."""
    fake_setpriv(tmp_path / "bin", "echo \"setpriv: unrecognized option '--pdeathsig'\" >&2; exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert pdeathsig_setpriv() is None
    command, popen = dying_with_parent(["redis-server", "-"])
    assert command == ["redis-server", "-"]
    assert popen == {"preexec_fn": terminate_with_parent}


def test_without_setpriv_browsers_start_unchanged_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=browser.__name__):
        assert browser._dying_launcher("/usr/bin/chromium") == "/usr/bin/chromium"
        assert browser._dying_launcher("/usr/bin/chromedriver") == "/usr/bin/chromedriver"
    assert [r.getMessage() for r in caplog.records if "setpriv" in r.getMessage()] == [
        "no setpriv with --pdeathsig (util-linux >= 2.33; scripts/setup.sh installs it): "
        "a Chromium whose actor is killed hard may keep running"
    ]
    service = browser._chromedriver_service("/usr/bin/chromedriver")
    assert service.path == "/usr/bin/chromedriver"
    assert service.popen_kw == {"preexec_fn": browser._die_with_parent}


@needs_setpriv
def test_launchers_are_shared_per_user_run_setpriv_by_absolute_path_and_run_their_target(tmp_path, monkeypatch):
    target = tmp_path / "target"
    target.write_text('#!/bin/sh\necho "ran with $*"\n')
    target.chmod(0o755)
    script = browser._dying_launcher(str(target))
    folder = tmp_path / "tmp" / f"qfleet-{os.getuid()}" / "launchers"
    assert os.path.dirname(script) == str(folder)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder.parent).st_mode) == 0o700
    assert f"exec {pdeathsig_setpriv()} --pdeathsig KILL -- " in open(script).read()
    assert os.listdir(folder) == [os.path.basename(script)]  # no temporary file left behind
    out = subprocess.run([script, "a", "b c"], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == "ran with a b c\n"
    monkeypatch.setattr(browser, "_launchers", {})  # another process: the same script, not a new one
    assert browser._dying_launcher(str(target)) == script
    assert os.listdir(folder) == [os.path.basename(script)]


@needs_setpriv
def test_a_launcher_folder_others_may_write_into_is_not_used(tmp_path, caplog):
    folder = tmp_path / "tmp" / f"qfleet-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger=browser.__name__):
        assert browser._dying_launcher("/usr/bin/chromium") == "/usr/bin/chromium"
    assert any("is not a private directory of this user" in r.getMessage() for r in caplog.records)
    assert not (folder / "launchers").exists()
