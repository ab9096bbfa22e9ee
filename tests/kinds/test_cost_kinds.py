"""Every kind's real session run reports what its rows cost (issue 35): the summary's cost section adds up to the
run's own counts, every kept type has a cost per kept row, and the card, `inspect` and `view` show the table."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("run", ["negatives_run", "rationales_run", "pairs_run", "retrieval_run"])
def test_a_real_runs_summary_card_inspect_and_view_show_what_a_kept_row_cost(run, request, capsys):
    from pipeline.cli import main
    from pipeline.view import build_app

    cfg, s = request.getfixturevalue(run)
    cost = s["cost"]
    total = cost["total"]
    assert total["units"] == s["units"] and total["tokens_out"] == s["tokens_out"]
    assert total["kept"] == s["kept"] > 0
    assert total["engine_s"] > 0 and "unmetered" not in total  # every part of this version records engine time
    assert cost["this_run"]["units"] == s["generated"]  # a first run made every unit
    assert set(cost["by_stage"]) <= set(json.loads((cfg.output.dir / "manifest.json").read_text())["cost"]["by_stage"])
    assert sum(t["kept"] for t in cost["by_type"]) == s["kept"]
    # shared tasks are split, not lost: the types' engine-seconds add up to the dataset's
    assert sum(t["engine_s"] for t in cost["by_type"]) == pytest.approx(total["engine_s"], rel=1e-3)
    assert all(t["engine_s_per_kept"] > 0 for t in cost["by_type"] if t["kept"])
    assert cost["accelerators"] == {"cpu": total["units"] - total.get("failed", 0)}
    card = (cfg.output.dir / "README.md").read_text()
    assert "## Cost" in card and "No price was set (`engine.price`)" in card
    for t in cost["by_type"]:
        assert f"| `{t['type']}` | {t['units']} | {t['valid']} | {t['kept']} |" in card
    assert main(["inspect", str(cfg.output.dir)]) == 0
    out = capsys.readouterr().out
    assert f"Cost: {total['units']} units" in out and all(t["type"] in out for t in cost["by_type"])
    page = TestClient(build_app(cfg.output.dir)).get("/").text
    assert "<h2>Cost</h2>" in page and "money / 1,000 kept rows" in page
