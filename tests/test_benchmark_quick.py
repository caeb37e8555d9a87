"""Smoke test of the benchmark (aiva_cy.bench.compare): it runs and its result has the promised shape.

The numbers themselves are not checked (docs/contract.md, "Speed": benchmarks, not timed tests);
one round of a few rows keeps this well under 20 s on 2 cores. What a run writes and whether it
is judged depend on how it went (quiet or disturbed): those tests feed the run fake timings.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import pytest

from aiva_cy.bench import compare, report
from aiva_cy.bench.timing import NOISY_MARK, Cell, Settings

ROWS = ("forward_b1", "predict_b64", "train_b64", "startup", "memory", "weights")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    return compare.run(quick=True, rounds=1, startup_runs=1, rows=ROWS, chart=False,
                       out_dir=out, verbose=False)


def test_rows_and_columns(result: Dict[str, Any]) -> None:
    assert list(result["rows"]) == list(ROWS)
    assert {"numpy", "aiva_cy", "floor"} <= set(result["columns"])
    for key in ("meta", "settings", "floor", "table"):
        assert key in result
    assert result["meta"]["threads"] >= 1


def test_aiva_cells_positive(result: Dict[str, Any]) -> None:
    for row, data in result["rows"].items():
        cell = data["cells"]["aiva_cy"]
        assert cell["value"] > 0 or row == "memory", row   # RSS growth may round to 0
        assert cell["value"] >= 0, row
        assert data["label"] == compare.ROW_LABELS[row]


def test_peers_of_each_row(result: Dict[str, Any]) -> None:
    rows = result["rows"]
    # forward and predict: BioNeuron, aiva_cy and the floor are always there.
    for row in ("forward_b1", "predict_b64"):
        assert {"numpy", "aiva_cy", "floor"} <= set(rows[row]["cells"])
        numpy, aiva = rows[row]["cells"]["numpy"], rows[row]["cells"]["aiva_cy"]
        # A ratio wherever both cells are clean, none where either was disturbed.
        if numpy["note"] or aiva["note"]:
            assert numpy["ratio"] is None
        else:
            assert numpy["ratio"] == pytest.approx(numpy["value"] / aiva["value"])
    # The BioNeuron cannot train.
    assert "numpy" not in rows["train_b64"]["cells"]
    assert rows["weights"]["cells"]["aiva_cy"]["value"] == 3_166_208 * 4
    assert rows["weights"]["cells"]["numpy"]["value"] == 3_166_208 * 8
    # A quick run judges nothing: no targets, no ticks, no target column.
    assert result["meta"]["mode"] == "quick" and result["meta"]["judged"] is False
    assert all(data["targets"] == [] for data in rows.values())
    assert "target" not in result["table"] and "✓" not in result["table"] and "✗" not in result["table"]


def test_table_and_json(result: Dict[str, Any], tmp_path: Path) -> None:
    table = result["table"]
    assert table.splitlines()[0].startswith("| work")
    for row in ROWS:
        assert compare.ROW_LABELS[row] in table
    # The result is JSON-serialisable as written by run().
    json.loads(json.dumps(result, default=str))


def test_a_quick_run_leaves_latest_alone(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("the last full run", encoding="utf-8")
    extra = tmp_path / "extra.json"
    compare.run(quick=True, rounds=1, rows=["weights"], chart=False, out_dir=tmp_path,
                json_path=extra, verbose=False)
    assert (tmp_path / "latest.json").read_text(encoding="utf-8") == "the last full run"
    written = list(tmp_path.glob("compare-*-quick.json"))
    assert len(written) == 1
    quick = json.loads(written[0].read_text(encoding="utf-8"))
    assert quick["meta"]["mode"] == "quick" and "weights" in quick["rows"]
    assert json.loads(extra.read_text(encoding="utf-8"))["rows"] == quick["rows"]


# --------------------------------------------------------------------------- faked timings
# The write rules and the verdicts depend on how a run went, which a real run on a test
# machine cannot choose: these runs take their timings from a fake harness instead.


def _fake_harness(monkeypatch: pytest.MonkeyPatch, noisy: Sequence[Tuple[str, str]] = (),
                  busy: float = 0.0) -> None:
    """Every case takes 1 ms (the BioNeuron 3 ms, ONNX 2 ms); ``noisy`` (row label prefix,
    peer) cells are marked disturbed."""
    rows = iter(r for r in compare.ROW_LABELS if r in compare.TIMED_ROWS)

    def measure(cases: Dict[str, Any], s: Any, mon: Any, budget: Any, log: Any) -> Dict[str, Cell]:
        row = next(rows)
        out = {}
        for name in cases:
            bad = (row, name) in noisy
            value = {"numpy": 3e-3, "onnx": 2e-3}.get(name, 1e-3) * (5 if bad else 1)
            out[name] = Cell(value=value, samples=[value] * 3, calls_per_block=10,
                             other_load=[0.9 if bad else 0.01] * 3, note=NOISY_MARK if bad else "")
        return out

    def startup(names: Sequence[str], *args: Any, **kwargs: Any) -> Dict[str, Dict[str, Cell]]:
        return {row: {p: Cell(value=0.1 if p != "aiva_cy" else 0.08, other_load=[0.0])
                      for p in names} for row in compare.STARTUP_ROWS}

    monkeypatch.setattr(compare, "measure_interleaved", measure)
    monkeypatch.setattr(compare, "measure_startup", startup)
    monkeypatch.setattr(compare, "cpu_busy", lambda *a: busy)


def _needs_onnx_peer() -> None:
    """These runs count the ONNX Runtime column among the cells (the floor environment of
    .ci/floor.sh has no ONNX Runtime, so there the column, and these counts, are absent)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


def test_a_full_quiet_run_is_judged_and_replaces_latest(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_onnx_peer()
    _fake_harness(monkeypatch)
    result = compare.run(out_dir=tmp_path, verbose=False)
    meta = result["meta"]
    assert (meta["mode"], meta["disturbed"], meta["judged"], meta["complete"]) == ("full", [], True, True)
    fwd = result["rows"]["forward_b1"]
    assert fwd["cells"]["numpy"]["ratio"] == pytest.approx(3.0)
    assert [t["met"] for t in fwd["targets"]][:2] == [True, True]     # ≤ 1.15× floor, ≤ ONNX
    assert "target" in result["table"] and "✓" in result["table"]
    latest = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert latest["rows"] == json.loads(json.dumps(result["rows"]))
    assert len(list(tmp_path.glob("compare-2*[0-9].json"))) == 1      # and the timestamped copy
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latest.png").stat().st_size > 0


def test_a_disturbed_run_is_not_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_onnx_peer()
    (tmp_path / "latest.json").write_text("the last quiet run", encoding="utf-8")
    _fake_harness(monkeypatch, noisy=[("forward_b1", "aiva_cy"), ("predict_b64", "onnx"),
                                      ("predict_b256", "floor"), ("train_b64", "aiva_cy")])
    result = compare.run(out_dir=tmp_path, verbose=False)
    meta = result["meta"]
    assert meta["mode"] == "full" and not meta["judged"]
    assert any("4 cells" in why for why in meta["disturbed"]), meta["disturbed"]
    assert all(data["targets"] == [] for data in result["rows"].values())
    # No ratio from a disturbed cell, nor to one: the whole forward row lost its base.
    assert all(c["ratio"] is None for c in result["rows"]["forward_b1"]["cells"].values())
    assert result["rows"]["predict_b64"]["cells"]["onnx"]["ratio"] is None
    assert result["rows"]["predict_b64"]["cells"]["numpy"]["ratio"] == pytest.approx(3.0)
    table = result["table"]
    assert "DISTURBED" not in table and "✓" not in table and "target" not in table
    assert "×" in table and "0.00×" not in table
    assert "DISTURBED" in report.render_status(result)
    assert (tmp_path / "latest.json").read_text(encoding="utf-8") == "the last quiet run"
    assert len(list(tmp_path.glob("compare-*-disturbed.json"))) == 1
    # The floor notes take nothing from a disturbed cell: the rate comes from the clean
    # floor at batch 64, not the disturbed one at 256, and train_b64 has no aiva_cy time.
    assert result["floor"]["rate_batch"] == 64
    assert result["floor"]["estimates"]["train_b64"]["aiva_s"] is None
    assert result["floor"]["estimates"]["train_b256"]["aiva_s"] == pytest.approx(1e-3)


def test_busy_before_the_run_is_disturbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_harness(monkeypatch, busy=0.6)
    result = compare.run(rows=["forward_b1"], write=False, verbose=False)
    assert not result["meta"]["judged"]
    assert result["meta"]["disturbed"] == ["the CPU was 60% busy with other work when the run began"]


def test_a_subset_of_rows_is_judged_but_leaves_latest(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_harness(monkeypatch)
    result = compare.run(rows=["forward_b1"], out_dir=tmp_path, chart=False, verbose=False)
    assert result["meta"]["judged"] and not result["meta"]["complete"]
    assert not (tmp_path / "latest.json").exists()
    assert len(list(tmp_path.glob("compare-*-partial.json"))) == 1


def test_the_short_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_harness(monkeypatch)
    result = compare.run_short(verbose=1)
    out, err = capsys.readouterr()
    assert list(result["rows"]) == list(compare.SHORT_ROWS)
    assert set(result["columns"]) <= set(compare.SHORT_COLUMNS)
    assert result["meta"]["mode"] == "short" and not result["meta"]["judged"]
    assert "SHORT table" in out and "no targets judged" in out and "✓" not in out
    assert "k=" not in out + err


def test_verbose_two_prints_the_harness_details(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    compare.run(quick=True, rounds=1, rows=["forward_b1"], columns=["aiva_cy"], write=False,
                verbose=2)
    assert "aiva_cy: k=" in capsys.readouterr().err
    compare.run(quick=True, rounds=1, rows=["forward_b1"], columns=["aiva_cy"], write=False,
                verbose=1)
    assert "k=" not in capsys.readouterr().err


def test_ratios_keep_their_digits() -> None:
    assert [report.fmt_ratio(r) for r in (246.6, 24.66, 1.944, 0.91, 0.0014)] == [
        "247×", "24.7×", "1.94×", "0.91×", "0.0014×"]
    assert compare.ratio_of(Cell(value=1.0), Cell(value=0.0)) is None
    assert compare.ratio_of(Cell(value=float("nan")), Cell(value=1.0)) is None
    assert compare.ratio_of(Cell(value=2.0), None) is None
    assert compare.ratio_of(Cell(value=2.0), Cell(value=1.0)) == 2.0


def test_chart_names_machine_kernel_and_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_onnx_peer()
    _fake_harness(monkeypatch, noisy=[("forward_b1", "onnx")])
    result = compare.run(rows=["forward_b1", "train_b64"], write=False, verbose=False)
    caption = report.chart_caption(result["meta"])
    assert result["meta"]["cpu"] in caption
    assert "BLAS kernel: float32 " in caption
    assert "DISTURBED" in caption and "cell" in caption
    pytest.importorskip("matplotlib")
    png = report.write_chart(result, tmp_path / "chart.png")
    assert png is not None and png.stat().st_size > 10_000


def test_bad_rows_rejected() -> None:
    with pytest.raises(ValueError, match="rows"):
        compare.run(quick=True, rows=["nope"], write=False, verbose=False)
    with pytest.raises(SystemExit):
        compare.main(["--rows", "nope"])


def test_less_measuring_effort_than_full_is_not_full() -> None:
    # A run whose numbers are judged against the targets warms each peer as the full run does.
    assert Settings.full().at_least_full()
    assert not Settings.quick().at_least_full()
    for field, less in (("rounds", 20), ("warmup", 3), ("rewarm_calls", 2), ("rewarm_s", 0.004)):
        assert not Settings(**{field: less}).at_least_full(), field
    assert Settings(rounds=30, rewarm_s=0.01).at_least_full()
