"""The Grafana dashboard is generated from the metric modules with Grafana's typed builders,
committed current, and complete: every exported series is on a panel, every panel has a unit and a
description, and the file is the schema of the Grafana that docker-compose runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as grafana_model

from system.observe import dashboard

ROOT = Path(__file__).resolve().parents[2]


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
    missing = sorted(set(dashboard.ALL_SERIES) - used - dashboard.OFF_PANEL)
    assert not missing, f"series no panel shows: {missing}"
    assert dashboard.OFF_PANEL <= set(dashboard.ALL_SERIES) - used  # off the panels: exported, and on none
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


def test_the_committed_file_is_exactly_grafanas_dashboard_schema():
    # Read into the SDK's typed model and written back unchanged: no field the schema lacks, none
    # misspelt (the model drops what it does not know), and the schema version Grafana migrates from.
    text = dashboard.OUTPUT.read_text()
    model = grafana_model.Dashboard.from_json(json.loads(text))
    assert json.dumps(model, cls=JSONEncoder, indent=2) + "\n" == text
    assert json.loads(text)["schemaVersion"] == grafana_model.Dashboard().schema_version
    hand_edited = json.loads(text)
    hand_edited["panels"][1]["fieldConfig"]["defaults"]["units"] = "s"  # a typo Grafana would ignore
    again = json.dumps(grafana_model.Dashboard.from_json(hand_edited), cls=JSONEncoder, indent=2) + "\n"
    assert again == text != json.dumps(hand_edited, indent=2) + "\n"


def test_the_sdk_pinned_is_the_schema_of_the_grafana_compose_runs():
    # grafana-foundation-sdk releases are "<build>!<grafana major.minor>.0", one line per Grafana release.
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    sdk_grafana = pins["grafana-foundation-sdk"].split("!")[1]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image_tag = compose["services"]["grafana"]["image"].split(":")[1]
    assert sdk_grafana.split(".")[:2] == image_tag.split(".")[:2], (sdk_grafana, image_tag)


def test_queries_are_read_from_the_built_dashboard():
    model = json.loads(dashboard.render())
    in_file = [(p["title"], t["expr"]) for p in model["panels"] if p["type"] != "row" for t in p["targets"]]
    assert dashboard.queries() == in_file
    assert len({title for title, _ in in_file}) == len(model["panels"]) - 4  # every panel queries something


def test_stat_panels_turn_colour_at_their_thresholds():
    panels = {p["title"]: p for p in json.loads(dashboard.render())["panels"]}
    lost = panels["Transitions lost"]
    assert lost["type"] == "stat"
    assert lost["options"]["reduceOptions"]["calcs"] == ["lastNotNull"]
    steps = lost["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"value": None, "color": "green"}, {"value": 1, "color": "red"}]
    assert panels["Faults ridden out"]["fieldConfig"]["defaults"]["thresholds"]["steps"][1] == {
        "value": 1,
        "color": "orange",
    }
    assert panels["Loss"]["type"] == "timeseries"
