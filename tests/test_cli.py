"""The cohort command, called in-process."""

from __future__ import annotations

import pytest

from engine.cli import main


def test_ingest_info_run(tmp_path, cohort_files, capsys):
    store = tmp_path / "c.zarr"
    assert main(["ingest", str(cohort_files["matrix"]), "--samples", str(cohort_files["samples"]),
                 "--genes", str(cohort_files["genes"]), "--chunk-genes", "16", "-o", str(store)]) == 0
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "40 genes x 8 samples, float32, scale log2" in out
    assert "chunks: 3 along gene of 16 genes x all samples" in out
    assert "group: case 4, control 4" in out
    assert "age: numeric: n=8" in out
    assert "sha256" in out
    job = tmp_path / "job.yaml"
    job.write_text("cohort: c.zarr\noutput: res\nanalyses:\n  - {name: mw, test: mann_whitney, "
                   "group: group, case: case, control: control}\n")
    assert main(["run", str(job), "--threads", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "Dask dashboard: http://127.0.0.1:" in captured.err
    assert (tmp_path / "res" / "mw.tsv").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path, cohort_files, capsys):
    path = cohort_files["matrix"]
    path.write_text(path.read_text().replace("G039", "G001"))
    assert main(["ingest", str(path), "--samples", str(cohort_files["samples"]),
                 "-o", str(tmp_path / "c.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: matrix") and "duplicate gene IDs: G001" in err
    assert "Traceback" not in err
    assert not (tmp_path / "c.zarr").exists()


def test_missing_required_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "m.tsv", "-o", "x.zarr"])
    assert exit_info.value.code == 2
    assert "--samples" in capsys.readouterr().err
