"""Smoke test of the benchmark (aiva_cy.bench.compare): it runs and its result has the promised shape.

The numbers themselves are not checked (docs/contract.md, "Speed": benchmarks, not timed tests);
one round of a few rows keeps this well under 20 s on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from aiva_cy.bench import compare

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
        ratio = rows[row]["cells"]["numpy"]["ratio"]
        assert ratio is not None and ratio > 0
    # The BioNeuron cannot train.
    assert "numpy" not in rows["train_b64"]["cells"]
    assert rows["weights"]["cells"]["aiva_cy"]["value"] == 3_166_208 * 4
    assert rows["weights"]["cells"]["numpy"]["value"] == 3_166_208 * 8
    # Targets: forward at batch 1 names all six conditions (float32, int8, bf16), met or not
    # (or n/a).
    texts = [t["text"] for t in rows["forward_b1"]["targets"]]
    assert len(texts) == 6
    for t in rows["forward_b1"]["targets"]:
        assert t["met"] in (True, False, None)


def test_table_and_json(result: Dict[str, Any], tmp_path: Path) -> None:
    table = result["table"]
    assert table.splitlines()[0].startswith("| work")
    for row in ROWS:
        assert compare.ROW_LABELS[row] in table
    # The result is JSON-serialisable as written by run().
    json.loads(json.dumps(result, default=str))


def test_run_writes_json(tmp_path: Path) -> None:
    extra = tmp_path / "extra.json"
    compare.run(quick=True, rounds=1, rows=["weights"], chart=False, out_dir=tmp_path,
                json_path=extra, verbose=False)
    latest = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert "weights" in latest["rows"]
    assert len(list(tmp_path.glob("compare-*.json"))) == 1
    assert json.loads(extra.read_text(encoding="utf-8"))["rows"] == latest["rows"]


def test_bad_rows_rejected() -> None:
    with pytest.raises(ValueError, match="rows"):
        compare.run(quick=True, rows=["nope"], write=False, verbose=False)
    with pytest.raises(SystemExit):
        compare.main(["--rows", "nope"])
