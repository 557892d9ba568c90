"""The sweep run ledger (SQLite), ``cohort status`` and the output lock."""

from __future__ import annotations

import collections
import datetime
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import InputError
from engine.sweep import ledger as ledger_module
from engine.sweep.ledger import COUNTED, RUNS_SHOWN, Ledger, status_report
from engine.sweep.lock import LOCK_NAME, output_lock

CLUSTER = {"workers": 3, "threads": 6, "scheduler": "tcp://127.0.0.1:8786",
           "dashboard": "http://127.0.0.1:8787/status"}
ROOT = Path(__file__).resolve().parents[1]


def unit_id(axes: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(axes.items()))


def plan(cohorts=("all", "gse1", "gse2"), variants=("welch", "student")) -> list[tuple]:
    """(unit, axes, fingerprint, status, error) for every cohort x variant, all pending."""
    out = []
    for cohort in cohorts:
        for variant in variants:
            axes = {"cohort": cohort, "contrast": "bcr", "library": "hallmark", "variant": variant}
            out.append((unit_id(axes), axes, f"fp-{cohort}-{variant}", "pending", None))
    return out


def begin(ledger: Ledger, units: list[tuple], sweep: str = "nightly") -> int:
    run_id = ledger.begin_run(sweep=sweep, sweep_file="/sweeps/nightly.yaml",
                              sweep_sha256="ab" * 32, engine_version="0.1.0",
                              command=["cohort", "sweep", "nightly.yaml"], cluster=CLUSTER,
                              units_total=len(units))
    ledger.set_units(run_id, units)
    return run_id


def parse(ts: str) -> datetime.datetime:
    t = datetime.datetime.fromisoformat(ts)
    assert t.utcoffset() == datetime.timedelta(0), ts
    return t


def finish(ledger: Ledger, run_id: int, outcomes: dict[str, tuple]) -> None:
    """Each unit: running, then its (status, error, tasks) outcome."""
    for unit, (status, error, tasks) in outcomes.items():
        ledger.unit_status(run_id, unit, "running")
        ledger.unit_status(run_id, unit, status, error=error, tasks=tasks)


def test_lifecycle_records_runs_units_and_counts(tmp_path):
    units = plan()
    ids = [u[0] for u in units]
    # the plan: two units skipped (committed), one invalid, one retired; two to compute
    units[0] = (*units[0][:3], "skipped", None)
    units[1] = (*units[1][:3], "invalid", "contrast 'bcr': level 'BCR/ABL' not in column mol")
    units.append(("cohort=old,contrast=bcr,library=hallmark,variant=welch",
                  {"cohort": "old", "contrast": "bcr", "library": "hallmark", "variant": "welch"},
                  "fp-old", "retired", None))
    outcomes = {ids[2]: ("computed", None, 17), ids[4]: ("computed", None, 11),
                ids[3]: ("failed", "ValueError: singular\ntrace", 5)}
    with Ledger(tmp_path / "out") as ledger:
        assert (tmp_path / "out" / "ledger.sqlite").is_file()
        run_id = begin(ledger, units)
        finish(ledger, run_id, outcomes)
        ledger.unit_status(run_id, ids[5], "computed", wall_s=2.5, tasks=9)  # never marked running
        ledger.end_run(run_id, "failed", tasks=123)
        runs, table = ledger.runs(), ledger.units()

    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["run_id"] == run_id and run["status"] == "failed" and run["sweep"] == "nightly"
    assert run["command"] == ["cohort", "sweep", "nightly.yaml"]
    assert (run["host"], run["pid"]) == (socket.gethostname(), os.getpid())
    assert run["sweep_file"] == "/sweeps/nightly.yaml" and run["engine_version"] == "0.1.0"
    assert {k: run[k] for k in CLUSTER} == CLUSTER
    assert run["units_total"] == len(units) and run["tasks"] == 123
    final = ({u[0]: u[3] for u in units} | {u: o[0] for u, o in outcomes.items()}
             | {ids[5]: "computed"})
    expected = collections.Counter(final.values())
    assert {c: run[c] for c in COUNTED} == {c: expected.get(c, 0) for c in COUNTED}
    assert run["wall_s"] == pytest.approx(
        (parse(run["finished_at"]) - parse(run["started_at"])).total_seconds())

    assert table["unit"].tolist() == [u[0] for u in units]  # plan order
    rows = table.set_index("unit")
    assert rows["status"].to_dict() == final
    assert rows["axes"].to_dict() == {u[0]: u[1] for u in units}
    assert rows["fingerprint"].to_dict() == {u[0]: u[2] for u in units}
    assert rows.loc[ids[1], "error"] == units[1][4]
    assert rows.loc[ids[3], "error"] == "ValueError: singular\ntrace"
    for unit, (_, _, tasks) in outcomes.items():  # ran: both stamps, wall_s between them
        r = rows.loc[unit]
        assert r["tasks"] == tasks
        assert r["wall_s"] == pytest.approx(
            (parse(r["finished_at"]) - parse(r["started_at"])).total_seconds())
    assert rows.loc[ids[5], "wall_s"] == 2.5 and rows.loc[ids[5], "tasks"] == 9
    for unit in (ids[0], ids[1], units[-1][0]):  # decided at plan time: finished, never started
        assert pd.isna(rows.loc[unit, "started_at"])
        assert parse(rows.loc[unit, "finished_at"]) >= parse(run["started_at"])


def test_numpy_numbers_are_stored_as_numbers(tmp_path):
    """Counts and ids often come from numpy/pandas; sqlite3 would store np.int64 as a BLOB."""
    units = plan(cohorts=("a",))
    with Ledger(tmp_path) as ledger:
        run_id = begin(ledger, units)
        ledger.unit_status(np.int64(run_id), units[0][0], "computed", tasks=np.int64(5),
                           wall_s=np.float32(1.5))
        ledger.end_run(np.int64(run_id), "succeeded", tasks=np.int64(9))
        unit = ledger.units(np.int64(run_id)).iloc[0]
        assert (unit["tasks"], unit["wall_s"]) == (5, 1.5)
        assert ledger.runs().iloc[0]["tasks"] == 9


def test_end_run_interrupts_unfinished_units_and_last_committed(tmp_path):
    units = plan(cohorts=("a", "b"))
    ids = [u[0] for u in units]
    with Ledger(tmp_path) as ledger:
        first = begin(ledger, units)
        finish(ledger, first, {ids[0]: ("computed", None, 1), ids[1]: ("computed", None, 1),
                               ids[2]: ("failed", "boom", 1)})
        ledger.unit_status(first, ids[3], "running")
        ledger.end_run(first, "interrupted")  # e.g. Ctrl-C: ids[3] was running
        table = ledger.units(first).set_index("unit")
        assert table.loc[ids[3], "status"] == "interrupted"
        run = ledger.runs().iloc[0]
        assert (run["computed"], run["failed"], run["status"]) == (2, 1, "interrupted")

        # a second run recomputes ids[0] with a new fingerprint and retires ids[1]
        second = begin(ledger, [(ids[0], units[0][1], "fp-new", "pending", None),
                                (ids[1], units[1][1], units[1][2], "retired", None)])
        finish(ledger, second, {ids[0]: ("computed", None, 1)})
        ledger.end_run(second, "succeeded")
        assert ledger.last_committed() == {ids[0]: "fp-new"}
        assert ledger.units()["run_id"].unique().tolist() == [second]  # default: latest run
        with pytest.raises(InputError, match=r"run 7 is not in .*runs 1-2"):
            ledger.units(7)
        with pytest.raises(ValueError, match="unit status 'done'"):
            ledger.unit_status(second, ids[0], "done")
        with pytest.raises(KeyError):
            ledger.unit_status(second, "cohort=zzz", "computed")


DEAD_RUN = """
import os, signal, sys
from engine.sweep.ledger import Ledger
units = [(f"cohort=c{i}", {"cohort": f"c{i}"}, f"fp{i}", "pending", None) for i in range(4)]
with Ledger(sys.argv[1]) as ledger:
    run_id = ledger.begin_run(sweep="nightly", sweep_file=None, sweep_sha256=None,
                              engine_version="0.1.0", command=sys.argv, cluster={},
                              units_total=4)
    ledger.set_units(run_id, units)
    ledger.unit_status(run_id, "cohort=c0", "running")
    ledger.unit_status(run_id, "cohort=c0", "computed")
    ledger.unit_status(run_id, "cohort=c1", "running")

    def plan_of_another_run():  # killed in the middle of a write: that write is lost whole
        for i in range(100):
            if i == 50:
                os.kill(os.getpid(), signal.SIGKILL)
            yield (f"x{i}", {}, None, "pending", None)

    ledger.set_units(run_id, plan_of_another_run())
"""


def test_mark_interrupted_after_a_killed_process(tmp_path):
    done = subprocess.run([sys.executable, "-c", DEAD_RUN, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with Ledger(tmp_path) as ledger:
        (run,) = ledger.runs().itertuples()
        assert run.status == "running"
        before = ledger.units(run.run_id)
        assert before["unit"].tolist() == [f"cohort=c{i}" for i in range(4)]  # no x* row
        last_seen = max([run.started_at, *before["started_at"].dropna(),
                         *before["finished_at"].dropna()])

        assert ledger.mark_interrupted() == [run.run_id]
        assert ledger.mark_interrupted() == []
        after = ledger.units(run.run_id).set_index("unit")
        assert after["status"].tolist() == ["computed", "interrupted", "interrupted", "interrupted"]
        (run,) = ledger.runs().itertuples()
        assert run.status == "interrupted" and run.finished_at == last_seen
        assert (run.computed, run.failed, run.units_total) == (1, 0, 4)
        assert run.wall_s == pytest.approx(
            (parse(last_seen) - parse(run.started_at)).total_seconds())
        assert run.pid != os.getpid()


def test_reader_sees_committed_writes_while_a_write_is_open(tmp_path, monkeypatch):
    units = plan(cohorts=("a",))
    with Ledger(tmp_path) as writer:
        run_id = begin(writer, units)
        with Ledger(tmp_path, create=False) as reader:  # a second connection
            writer.unit_status(run_id, units[0][0], "computed")
            assert reader.units(run_id)["status"].tolist() == ["computed", "pending"]

            # another connection in the middle of a write transaction: readers are not blocked
            # and see only what was committed
            raw = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None,
                                  check_same_thread=False)
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("UPDATE units SET status = 'failed'")
            assert reader.units(run_id)["status"].tolist() == ["computed", "pending"]
            report = json.loads(status_report(tmp_path, as_json=True))
            assert report["units"][1]["status"] == "pending"
            raw.execute("ROLLBACK")

            # while a commit holds the database exclusively, a reader waits (busy timeout)
            raw.execute("BEGIN EXCLUSIVE")
            release = threading.Timer(0.3, raw.execute, ["ROLLBACK"])
            release.start()
            assert len(reader.runs()) == 1
            release.join()
            raw.close()

    # without the busy timeout the same read fails at once: the wait above was the timeout
    monkeypatch.setattr(ledger_module, "BUSY_TIMEOUT_S", 0.0)
    raw = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    raw.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            status_report(tmp_path)
    finally:
        raw.execute("ROLLBACK")
        raw.close()


def test_status_report_text_and_json(tmp_path):
    units = plan(cohorts=("a", "b"))
    ids = [u[0] for u in units]
    long_error = "KeyError: " + "gene_set_" * 30 + "\nTraceback line 2"
    with Ledger(tmp_path) as ledger:
        first = begin(ledger, units)
        finish(ledger, first, {ids[0]: ("computed", None, 4), ids[1]: ("failed", long_error, 2),
                               ids[2]: ("computed", None, 4), ids[3]: ("computed", None, 4)})
        ledger.end_run(first, "failed", tasks=40)
        second = begin(ledger, [(u[0], u[1], u[2], "skipped", None) for u in units])
        ledger.end_run(second, "succeeded", tasks=0)
        runs = ledger.runs()

    text = status_report(tmp_path)
    lines = text.splitlines()
    assert lines[0] == f"runs in {tmp_path / 'ledger.sqlite'} (all 2):"
    summary = next(line for line in lines if line.startswith("run 2 "))
    assert "succeeded" in summary and "0 computed, 4 skipped, 0 failed" in summary
    assert "3 workers, 6 threads on tcp://127.0.0.1:8786" in summary
    assert sum(line.startswith(ids[0]) for line in lines) == 1

    text = status_report(tmp_path, run_id=first)
    summary = next(line for line in text.splitlines() if line.startswith(f"run {first} "))
    assert "3 computed, 0 skipped, 1 failed" in summary and "40 tasks" in summary
    header = next(line for line in text.splitlines() if line.startswith("unit "))
    (failed_line,) = [line for line in text.splitlines() if line.startswith(ids[1])]
    assert " failed " in failed_line and "Traceback" not in text
    shown_error = failed_line[header.index("error"):]
    assert shown_error.endswith("...") and len(shown_error) <= 100
    assert long_error.startswith(shown_error.removesuffix("...").rstrip())

    report = json.loads(status_report(tmp_path, as_json=True, run_id=first))
    assert [r["run_id"] for r in report["runs"]] == runs["run_id"].tolist()
    assert report["runs"][0]["command"] == ["cohort", "sweep", "nightly.yaml"]
    assert {c: report["runs"][0][c] for c in COUNTED} == {c: int(runs.iloc[0][c]) for c in COUNTED}
    assert report["runs"][1]["wall_s"] == runs.iloc[1]["wall_s"]
    by_unit = {u["unit"]: u for u in report["units"]}
    assert list(by_unit) == ids
    assert by_unit[ids[1]]["error"] == long_error and by_unit[ids[1]]["tasks"] == 2
    assert by_unit[ids[0]]["axes"] == units[0][1]
    assert set(by_unit[ids[0]]) == {"run_id", "unit", "axes", "fingerprint", "status",
                                    "started_at", "finished_at", "wall_s", "error", "tasks"}


def test_status_report_shows_the_latest_runs_unless_all(tmp_path):
    with Ledger(tmp_path) as ledger:
        for _ in range(RUNS_SHOWN + 2):
            ledger.end_run(begin(ledger, plan(cohorts=("a",))), "succeeded")
    latest = json.loads(status_report(tmp_path, as_json=True))["runs"]
    assert [r["run_id"] for r in latest] == list(range(3, RUNS_SHOWN + 3))
    every = json.loads(status_report(tmp_path, as_json=True, all_runs=True))["runs"]
    assert [r["run_id"] for r in every] == list(range(1, RUNS_SHOWN + 3))
    scope = f"(latest {RUNS_SHOWN} of {RUNS_SHOWN + 2}; --all shows every run)"
    assert scope in status_report(tmp_path)


def test_status_report_refuses_what_is_not_a_ledger(tmp_path):
    with pytest.raises(InputError, match=r"has no ledger.sqlite: not a sweep output \(run "
                                         r"`cohort sweep SWEEP.yaml` first\)"):
        status_report(tmp_path)
    assert not (tmp_path / "ledger.sqlite").exists()  # looking created nothing
    with Ledger(tmp_path):
        pass
    assert status_report(tmp_path).startswith("no runs recorded")
    assert json.loads(status_report(tmp_path, as_json=True)) == {"runs": [], "units": []}
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(InputError, match="newer cohort-engine"):
        status_report(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ledger.sqlite").write_text("not a database, " * 100)
    with pytest.raises(InputError, match="is not an SQLite ledger"):
        Ledger(tmp_path / "other")


HOLDER = """
import sys, time
from engine.sweep.lock import output_lock
with output_lock(sys.argv[1], sweep="nightly"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_output_lock_refuses_a_second_holder_until_the_first_dies(tmp_path):
    out = tmp_path / "new" / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        record = json.loads((out / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["sweep"] == "nightly"
        assert record["host"] == socket.gethostname()
        assert datetime.datetime.now(datetime.UTC) >= parse(record["started_at"])
        with pytest.raises(InputError) as refused:
            with output_lock(out, sweep="other"):
                pytest.fail("the lock was granted twice")
        assert str(refused.value) == (
            f"output {out} is in use by sweep nightly (pid {holder.pid} on "
            f"{socket.gethostname()} since {record['started_at']}); wait for it to finish or "
            "choose another output")
        assert json.loads((out / LOCK_NAME).read_text()) == record  # the refusal changed nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    assert holder.returncode == -signal.SIGKILL

    with output_lock(out, sweep="next") as mine:  # the dead holder blocks nothing
        assert json.loads((out / LOCK_NAME).read_text()) == mine
        assert (mine["pid"], mine["sweep"]) == (os.getpid(), "next")
    assert (out / LOCK_NAME).read_text() == ""  # released: no holder named
    with output_lock(out, sweep="again"):
        pass


def test_output_lock_is_exclusive_within_a_process_too(tmp_path):
    with output_lock(tmp_path, sweep="first"):
        with pytest.raises(InputError, match=rf"in use by sweep first \(pid {os.getpid()} "):
            with output_lock(tmp_path, sweep="second"):
                pass
