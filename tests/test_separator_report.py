"""The before/after report reads what `msdm evaluate --csv` writes (the real
writer, training.evaluate.write_results) and puts each number where it belongs."""

import pytest

from training import evaluate as ev
from training import separator_report as report

STEMS = ("bass", "drums", "guitar", "piano")


def write_eval(path, methods):
    per_method = {m: {**dict(zip(STEMS, values)), "All": sum(values) / 4} for m, values in methods.items()}
    result = ev.EvaluationResult(STEMS, per_method, 7, 2, 30.0, {"likelihood": "dirac"})
    ev.write_results([result], path, path.with_suffix(".md"))
    return path


def test_report_puts_each_file_model_row_in_its_column(tmp_path):
    before = write_eval(tmp_path / "before.csv", {"model": (1.0, 2.0, 3.0, 4.0), "oracle": (20.0, 21.0, 22.0, 23.0)})
    after = write_eval(tmp_path / "after.csv", {"model": (5.0, 6.0, 7.0, 8.5)})
    records = report.collect([("own held-out", str(before), str(after))])
    assert records[0]["before"] == {"bass": 1.0, "drums": 2.0, "guitar": 3.0, "piano": 4.0, "All": 2.5}
    assert records[0]["after"]["piano"] == 8.5 and records[0]["after"]["All"] == pytest.approx(6.625)
    assert records[0]["oracle"]["guitar"] == 22.0      # taken from whichever file has it
    table = report.markdown(records, ("shipped", "new")).splitlines()
    assert table[2] == "| own held-out | shipped | 1.00 | 2.00 | 3.00 | 4.00 | 2.50 |"
    assert table[3] == "|  | new | **5.00** | **6.00** | **7.00** | **8.50** | **6.62** |"
    assert table[4].startswith("|  | oracle (ideal ratio mask) | 20.00 |")


def test_report_writes_table_and_figure(tmp_path):
    before = write_eval(tmp_path / "b.csv", {"model": (1.0, 2.0, 3.0, 4.0)})
    after = write_eval(tmp_path / "a.csv", {"model": (2.0, 3.0, 4.0, 5.0)})
    md, png = tmp_path / "out" / "r.md", tmp_path / "out" / "r.png"
    report.main(["--source", "TEST", str(before), str(after), "--source", "again", str(after), str(before),
                 "--markdown", str(md), "--figure", str(png)])
    assert md.read_text().count("| TEST |") == 1 and "| again |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_a_file_without_a_model_row_or_columns_is_refused(tmp_path):
    only_oracle = write_eval(tmp_path / "o.csv", {"oracle": (1.0, 2.0, 3.0, 4.0)})
    with pytest.raises(ValueError, match="no `model` row"):
        report.collect([("x", str(only_oracle), str(only_oracle))])
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an `msdm evaluate --csv` file"):
        report.read_rows(junk)
    with pytest.raises(SystemExit):   # the CLI says so and exits, it does not crash
        report.main(["--source", "x", str(junk), str(junk)])
