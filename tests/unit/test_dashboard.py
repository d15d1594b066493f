"""The Grafana dashboard is generated from the metric modules, committed current, and complete:
every exported series is on a panel, every panel has a unit and a description."""

from __future__ import annotations

import json
import re

import pytest

from system.observe import dashboard


def test_committed_dashboard_is_what_the_generator_writes():
    assert dashboard.OUTPUT.read_text() == dashboard.render(), "run: python -m system.observe.dashboard"
    assert dashboard.main(["--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "qfleet.json"
    stale.write_text(dashboard.render().replace('"Loss"', '"Loss (old)"'))
    assert dashboard.main(["--check", "--output", str(stale)]) == 1
    assert "not current" in capsys.readouterr().err


def test_every_exported_series_is_on_a_panel():
    text = "\n".join(expr for _, expr in dashboard.queries())
    used = set(re.findall(r"qfleet_[a-z_]+", text))
    used |= {name.removesuffix("_bucket") for name in used}
    missing = sorted(set(dashboard.ALL_SERIES) - used)
    assert not missing, f"series no panel shows: {missing}"
    # The learner recipes' figures the issue names are all there.
    recipe_figures = "updates_per_second loss q_mean td_error grad_norm achieved_utd target_utd"
    recipe_figures += " weight_version policy_staleness sample_age_seconds"
    for name in recipe_figures.split():
        assert f"qfleet_learner_{name}" in used


def test_every_panel_has_a_unit_a_description_and_run_scoped_queries():
    model = json.loads(dashboard.render())
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert [p["title"] for p in model["panels"] if p["type"] == "row"] == ["Run", "Learner", "Replay", "Actors"]
    assert len({p["id"] for p in model["panels"]}) == len(model["panels"])
    for panel in panels:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert len(panel["description"]) > 20, panel["title"]
        for target in panel["targets"]:
            assert '{run=~"$run"' in target["expr"], (panel["title"], target["expr"])
            assert target["legendFormat"]
    # Panels never overlap on the 24-column grid.
    cells = set()
    for panel in model["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_a_series_no_module_defines_is_refused():
    with pytest.raises(KeyError, match="qfleet_learner_lossy"):
        dashboard.series("qfleet_learner_lossy")
