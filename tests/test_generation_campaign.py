"""training.generation_campaign: one mean per measure from an evaluate-generation
CSV (model rows only), a clear error when a measure is missing, and a figure."""

from __future__ import annotations

import csv

import pytest

from training.generation_campaign import MEASURES, campaign_values, main

MODEL = "model (dpmpp2m 24 steps x 1, churn 0, NFE 24)"


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "method", "metric", "stem", "value", "windows", "settings"])
        writer.writerows([*r, 16, "{}"] for r in rows)


def _rows(scale):
    rows = [("generate", "real (the evaluation windows)", "log-mel distance", "drums", 9.0)]
    for stem, value in (("bass", 5.0), ("drums", 0.2), ("guitar", 0.4), ("piano", 0.6)):
        rows.append(("generate", MODEL, "log-mel distance", stem, value * scale))
    for stem, value in (("bass", 0.5), ("guitar", 0.7), ("piano", 0.9)):
        rows.append(("generate", MODEL, "clarity ratio", stem, value * scale))
    for task, stems in (("impute bass+drums", ("guitar", "piano")), ("impute piano", ("bass", "guitar"))):
        for stem in stems:
            for metric in ("clarity ratio", "chroma agreement", "onset agreement"):
                rows.append((task, MODEL, metric, stem, (0.1 if task == "impute piano" else 0.3) * scale))
    return rows


def test_means_of_the_model_rows(tmp_path):
    _write(tmp_path / "a.csv", _rows(1.0))
    values = campaign_values(tmp_path / "a.csv")
    titles = [m[0] for m in MEASURES]
    assert values[titles[0]] == pytest.approx(0.4)      # drums, guitar, piano only; the real row ignored
    assert values[titles[1]] == pytest.approx(0.7)
    assert values[titles[3]] == pytest.approx(0.2)      # both given sets


def test_missing_measure_is_a_clear_error_and_a_figure_is_drawn(tmp_path, capsys):
    _write(tmp_path / "a.csv", _rows(1.0))
    _write(tmp_path / "b.csv", _rows(1.2))
    _write(tmp_path / "impute-only.csv", [r for r in _rows(1.0) if r[0] != "generate"])
    with pytest.raises(SystemExit):
        main(["--point", f"x:1:{tmp_path / 'impute-only.csv'}", "-o", str(tmp_path / "f.png")])
    assert "no model rows of generate" in capsys.readouterr().err
    assert main(["--point", f"a:10:{tmp_path / 'a.csv'}", "--point", f"b:20:{tmp_path / 'b.csv'}",
                 "-o", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_a_generation_only_sweep(tmp_path, capsys):
    """--tasks generate reads generation rows alone (an autoguidance sweep has no
    imputation rows); the imputation panels are then neither asked for nor drawn."""
    _write(tmp_path / "g.csv", [r for r in _rows(1.0) if r[0] == "generate"])
    values = campaign_values(tmp_path / "g.csv", ("generate",))
    assert set(values) == {m[0] for m in MEASURES if m[1] == "generate"}
    _write(tmp_path / "a.csv", _rows(1.0))
    assert main(["--point", f"w 1:1:{tmp_path / 'g.csv'}", "--point", f"w 2:2:{tmp_path / 'a.csv'}",
                 "--tasks", "generate", "--x-label", "autoguidance weight", "-o", str(tmp_path / "w.png")]) == 0
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):       # the full campaign still needs the imputation rows
        main(["--point", f"w 1:1:{tmp_path / 'g.csv'}", "-o", str(tmp_path / "x.png")])
    assert "no model rows of impute" in capsys.readouterr().err
