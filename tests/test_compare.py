"""The neck comparison (fpn_lab.runner.compare) on the study's own runs (bench/logs/necks/seed0, kept
in git): grouping by neck, mean ± sd over seeds, the 2-standard-error screen, refusals, complexity,
and the per-neck table on a batch's comparison page."""

from __future__ import annotations

import copy
import math
import shutil
import statistics

import pytest

from conftest import ROOT
from fpn_lab.errors import ParamsError
from fpn_lab.runner.compare import (add_complexity, beyond_spread, load_runs, markdown_table, neck_label, neck_table,
                                    table_records)

SEED0 = ROOT / "bench" / "logs" / "necks" / "seed0"


@pytest.fixture(scope="module")
def seed0():
    runs = load_runs(SEED0)
    assert len(runs) == 6
    return runs


def _reseeded(m: dict, seed: int, ap: float) -> dict:
    """A copy of run ``m`` as if trained with another seed, with AP ``ap``."""
    m = copy.deepcopy(m)
    m["seed"] = m["params"]["seed"] = seed
    m["metrics"]["AP"] = ap
    return m


def test_beyond_spread_is_two_standard_errors_of_the_difference():
    # sd 0.01 over 3 seeds each: SE of the difference sqrt(2 * 0.0001 / 3) = 0.00816, two SE 0.0163
    assert beyond_spread((0.50, 0.01, 3), (0.48, 0.01, 3)) is True
    assert beyond_spread((0.50, 0.01, 3), (0.49, 0.01, 3)) is False
    assert beyond_spread((0.50, 0.0, 1), (0.40, 0.01, 3)) is None  # one seed: no spread to compare with


def test_one_row_per_neck_with_the_preset_s_own_neck_first(seed0):
    rows = neck_table(seed0)
    assert [r["neck"] for r in rows] == ["YOLOXPAFPN", "BiFPN", "ChannelMapper", "FPN", "NASFPN", "PAFPN"]
    by_file = {m["model"]["neck"]: m for m in seed0}
    for r in rows:
        m = by_file[r["neck"]]
        assert r["stats"]["AP"] == (m["metrics"]["AP"], 0.0, 1) and r["seeds"] == [0]
        assert r["per_class"]["Platelets"][0] == m["metrics"]["per_class_AP"]["Platelets"]
        assert r["verdict"] == ("baseline" if r is rows[0] else "n/a (< 2 seeds)")
    assert rows[0]["delta_AP"] == 0.0


def test_mean_sd_and_verdict_over_seeds(seed0):
    fpn = next(m for m in seed0 if m["model"]["neck"] == "FPN")
    own = next(m for m in seed0 if m["model"]["neck"] == "YOLOXPAFPN")
    runs = [_reseeded(own, s, ap) for s, ap in ((0, 0.50), (1, 0.51), (2, 0.49))]
    runs += [_reseeded(fpn, s, ap) for s, ap in ((0, 0.40), (1, 0.42), (2, 0.41))]
    runs += [_reseeded(next(m for m in seed0 if m["model"]["neck"] == "BiFPN"), s, ap) for s, ap in ((0, 0.50), (1, 0.52))]
    rows = {r["neck"]: r for r in neck_table(runs)}
    assert rows["FPN"]["stats"]["AP"] == pytest.approx((0.41, statistics.stdev([0.40, 0.42, 0.41]), 3))
    assert rows["FPN"]["delta_AP"] == pytest.approx(-0.09)
    assert rows["FPN"]["verdict"] == "beyond the spread"
    assert rows["BiFPN"]["verdict"] == "within the spread" and rows["BiFPN"]["seeds"] == [0, 1]
    rec = {r["neck"]: r for r in table_records(list(rows.values()))}
    assert rec["FPN"]["AP"] == "0.410 ± 0.010" and rec["FPN"]["AP vs baseline"] == "-0.090, beyond the spread"
    assert markdown_table(list(rec.values())).count("\n") == 3 + 1


def test_a_chosen_baseline_and_a_missing_one(seed0):
    assert neck_table(seed0, baseline="FPN")[0]["neck"] == "FPN"
    with pytest.raises(ParamsError, match="baseline 'BIFPN' is not one of the necks compared"):
        neck_table(seed0, baseline="BIFPN")


def test_coco_s_minus_one_is_no_boxes_not_a_number(seed0):
    runs = [copy.deepcopy(m) for m in seed0]
    runs[0]["metrics"]["AP_small"] = -1.0
    row = next(r for r in neck_table(runs) if r["neck"] == neck_label(runs[0]))
    assert row["stats"]["AP_small"][2] == 0 and math.isnan(row["stats"]["AP_small"][0])
    assert table_records([row])[0]["AP small"] == "n/a"


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(status="failed"), "did not finish ok"),
    (lambda m: m["metrics"].update(AP=math.nan), "without an AP"),  # its seed dropped from the mean, n kept it
    (lambda m: m["params"].update(epochs=7), r"differ in \['epochs'\]"),
    (lambda m: m["params"].update(image_size=256), r"differ in \['image_size'\]"),
])
def test_runs_that_are_not_a_neck_comparison_are_refused(seed0, change, match):
    runs = copy.deepcopy(seed0)
    change(runs[2])
    with pytest.raises(ParamsError, match=match):
        neck_table(runs)


def test_two_runs_of_one_neck_with_one_seed_are_refused(seed0):
    with pytest.raises(ParamsError, match=r"two runs share a seed \(\[0, 0\]\)"):
        neck_table([*seed0, copy.deepcopy(seed0[0])])


def test_load_runs_reads_run_metrics_only(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_runs(tmp_path / "nowhere")
    (tmp_path / "predictions.json").write_text("[]")
    with pytest.raises(ParamsError, match="no run metrics"):
        load_runs(tmp_path)
    shutil.copy(SEED0 / "fpn.json", tmp_path / "metrics.json")
    (run,) = load_runs(tmp_path)
    assert run["_source"] == str(tmp_path / "metrics.json") and run["model"]["neck"] == "FPN"


def test_complexity_of_each_neck_from_an_untrained_copy(seed0):
    runs = [m for m in seed0 if m["model"]["neck"] in ("FPN", "YOLOXPAFPN")]
    rows = add_complexity(neck_table(runs), runs, repeats=2)
    for r in rows:
        trained = next(m for m in runs if m["model"]["neck"] == r["neck"])
        assert r["params"] == trained["model"]["params"]  # the same architecture as the run trained
        assert 0 < r["neck_params"] < r["params"] and 0 < r["neck_flops"] < r["flops"]
        assert r["latency_1img_ms"] > 0 and r["image_size"] == 320
    fpn, own = (next(r for r in rows if r["neck"] == n) for n in ("FPN", "YOLOXPAFPN"))
    assert fpn["neck_params"] < own["neck_params"]  # plain FPN has no CSP blocks nor a bottom-up path
    assert "GFLOPs @320" in table_records(rows)[0]


def test_a_neck_batch_page_shows_the_per_neck_table(tmp_path):
    from fpn_lab.runner.batch import _row, write_report

    rows = []
    for f in sorted(SEED0.glob("*.json")):
        (tmp_path / f.stem).mkdir()
        shutil.copy(f, tmp_path / f.stem / "metrics.json")
        rows.append(_row(f.stem, tmp_path / f.stem))
    _, index = write_report(tmp_path, rows)
    page = index.read_text()
    table = page[page.index('<table id="necks">'):]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + 6 and "<td>YOLOXPAFPN</td>" in table and "<td>BiFPN</td>" in table
    assert "AP vs baseline" in table and "baseline</td>" in table
    rows[1]["_metrics"]["params"]["epochs"] = 9  # no longer one recipe: a note instead of the table
    _, index = write_report(tmp_path, rows)
    page = index.read_text()
    assert '<table id="necks">' not in page and "No per-neck table: the runs differ in [&#39;epochs&#39;]" in page
