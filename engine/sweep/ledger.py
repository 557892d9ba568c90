"""The run ledger of a sweep: one SQLite file, ``OUTPUT/ledger.sqlite``, recording every run
(which sweep file, by whom, on what cluster, with what outcome) and every unit of each run
(fingerprint, status, timings, error). ``cohort status OUTPUT`` prints it.

Journal mode: SQLite's rollback journal with a busy timeout, not WAL. A sweep's output often
lives on a shared filesystem (NFS, Lustre, GPFS on a cluster), where WAL's shared-memory index
does not work across hosts (sqlite.org/wal.html: "WAL does not work over a network
filesystem"). The sweep is the only writer (it holds the output lock, ``engine.sweep.lock``)
and each write is one small transaction committed at once, so a reader waits at most for one
commit (milliseconds) and a SIGKILL loses at most the write in progress: the next connection
rolls back its hot journal.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from engine.errors import InputError

LEDGER_NAME = "ledger.sqlite"
#: ``PRAGMA user_version`` of a ledger this engine writes; older ledgers are upgraded in place.
SCHEMA_VERSION = 1
#: How long a connection waits for another one's write to commit before giving up.
BUSY_TIMEOUT_S = 30.0
#: Runs ``cohort status`` shows without ``--all``.
RUNS_SHOWN = 10

RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
UNIT_STATUSES = ("pending", "running", "computed", "skipped", "failed", "invalid", "retired",
                 "interrupted")
FINAL_UNIT_STATUSES = frozenset(UNIT_STATUSES[2:])
#: The outcomes a finished run counts in its own columns of ``runs``.
COUNTED = ("computed", "skipped", "failed", "invalid", "retired")
_INTEGER_COLUMNS = {"run_id", "pid", "units_total", *COUNTED, "workers", "threads", "tasks"}
_FLOAT_COLUMNS = {"wall_s"}
_JSON_COLUMNS = {"command", "axes"}


def _one_of(values: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


#: ``_MIGRATIONS[i]``: the statements that take a ledger from schema version i to i + 1.
_MIGRATIONS = [
    [
        f"""CREATE TABLE runs (
            run_id INTEGER PRIMARY KEY,
            sweep TEXT NOT NULL,
            sweep_file TEXT,
            sweep_sha256 TEXT,
            engine_version TEXT,
            command TEXT,                 -- JSON list: the argv of the run
            host TEXT,
            pid INTEGER,
            started_at TEXT NOT NULL,     -- ISO 8601, UTC
            finished_at TEXT,
            status TEXT NOT NULL CHECK (status IN {_one_of(RUN_STATUSES)}),
            units_total INTEGER,
            computed INTEGER, skipped INTEGER, failed INTEGER, invalid INTEGER, retired INTEGER,
            workers INTEGER, threads INTEGER, scheduler TEXT, dashboard TEXT,
            wall_s REAL,
            tasks INTEGER                 -- Dask tasks submitted by the run
        )""",
        f"""CREATE TABLE units (
            run_id INTEGER NOT NULL REFERENCES runs (run_id),
            unit TEXT NOT NULL,
            axes TEXT NOT NULL,           -- JSON object: axis name -> value
            fingerprint TEXT,
            status TEXT NOT NULL CHECK (status IN {_one_of(UNIT_STATUSES)}),
            started_at TEXT,
            finished_at TEXT,
            wall_s REAL,
            error TEXT,
            tasks INTEGER,
            PRIMARY KEY (run_id, unit)
        )""",
        "CREATE INDEX units_by_unit ON units (unit, status, run_id)",
    ],
]
assert len(_MIGRATIONS) == SCHEMA_VERSION


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _seconds_between(start: str, end: str) -> float:
    delta = datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)
    return delta.total_seconds()


def _number(value, kind=int):
    """``value`` as a plain int/float (numpy integers would be stored as 8-byte BLOBs)."""
    return None if value is None else kind(value)


def _check_status(status: str, allowed: Iterable[str], what: str) -> None:
    if status not in allowed:
        raise ValueError(f"{what} {status!r} is not one of {', '.join(allowed)}")


class Ledger:
    """The ledger of one sweep output directory, open for the duration of a ``with`` block.

    ``Ledger(output)`` creates ``output/ledger.sqlite`` and its schema on first use (and
    upgrades an older schema); ``Ledger(output, create=False)`` opens an existing ledger for
    reading (``cohort status``) and raises InputError where there is none. Every write is
    committed before the method returns. Safe to call from any thread of the process.
    """

    def __init__(self, output: str | Path, *, create: bool = True):
        self.output = Path(output)
        self.path = self.output.absolute() / LEDGER_NAME
        self._guard = threading.Lock()
        self._db = self._connect(create)
        try:
            self._check_schema(create)
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- connection and schema -------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target, uri = str(self.path), False
        elif not self.path.is_file():
            raise InputError(f"{self.output} has no {LEDGER_NAME}: not a sweep output (run "
                             "`cohort sweep SWEEP.yaml` first)")
        else:  # mode=rw never creates a file, and opens read-only where the file is read-only
            target, uri = self.path.as_uri() + "?mode=rw", True
        # isolation_level=None: no implicit transactions; each write opens its own (_write)
        db = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                             check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def _check_schema(self, create: bool) -> None:
        """Creates or upgrades the schema (writer), or checks that it can be read (reader)."""
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError:  # e.g. locked longer than the busy timeout
            raise
        except sqlite3.DatabaseError as e:  # "file is not a database"
            raise InputError(f"{self.path} is not an SQLite ledger ({e}); move it away or "
                             "choose another output") from None
        if version > SCHEMA_VERSION:
            raise InputError(f"{self.path} was written by a newer cohort-engine (ledger schema "
                             f"{version}; this one reads up to {SCHEMA_VERSION}); upgrade "
                             "cohort-engine")
        if version == SCHEMA_VERSION:
            return
        if not create:
            raise InputError(f"{self.path} has no ledger tables yet (schema version {version}); "
                             "if a sweep is just starting, try again in a moment")
        with self._write() as db:  # re-read: another process may have created it meanwhile
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed at the end of the block, rolled back on error.
        BEGIN IMMEDIATE takes the write lock at the start, so a second writer waits for it
        (busy timeout) instead of failing when a read lock would have to be upgraded."""
        with self._guard:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, sql: str, params: tuple | dict = ()) -> pd.DataFrame:
        """A query's rows as a DataFrame: JSON columns decoded, integer columns as Int64 (an
        empty count stays missing, not NaN in a float column)."""
        with self._guard:
            cursor = self._db.execute(sql, params)
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
        for row in rows:
            for name in _JSON_COLUMNS.intersection(columns):
                if row[name] is not None:
                    row[name] = json.loads(row[name])
        frame = pd.DataFrame(rows, columns=columns)
        for name in _INTEGER_COLUMNS.intersection(columns):
            frame[name] = frame[name].astype("Int64")
        for name in _FLOAT_COLUMNS.intersection(columns):
            frame[name] = frame[name].astype("float64")
        return frame

    # -- writing ---------------------------------------------------------------------------

    def begin_run(self, *, sweep: str, sweep_file: str | Path | None, sweep_sha256: str | None,
                  engine_version: str, command: list[str], cluster: dict,
                  units_total: int) -> int:
        """Records a new run as 'running' (this host and process, now); returns its run_id.
        ``cluster``: ``workers``, ``threads``, ``scheduler``, ``dashboard`` (as
        ``engine.cluster.describe`` gives them); missing keys are recorded as empty."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (sweep, sweep_file, sweep_sha256, engine_version, command, host,"
                " pid, started_at, status, units_total, workers, threads, scheduler, dashboard)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (sweep, None if sweep_file is None else str(sweep_file), sweep_sha256,
                 engine_version, json.dumps([str(c) for c in command]), socket.gethostname(),
                 os.getpid(), _now(), _number(units_total), _number(cluster.get("workers")),
                 _number(cluster.get("threads")), cluster.get("scheduler"),
                 cluster.get("dashboard")))
            return cursor.lastrowid

    def set_units(self, run_id: int,
                  units: Iterable[tuple[str, dict, str | None, str, str | None]]) -> None:
        """Records the plan of a run in one transaction: ``(unit, axes, fingerprint, status,
        error)`` per unit. A 'running' unit gets started_at, a final one (skipped, invalid,
        retired, ...) finished_at, both now."""
        now, run_id = _now(), int(run_id)

        def rows():
            for unit, axes, fingerprint, status, error in units:
                _check_status(status, UNIT_STATUSES, f"unit {unit!r}: status")
                yield (run_id, unit, json.dumps(axes, sort_keys=True), fingerprint, status,
                       now if status == "running" else None,
                       now if status in FINAL_UNIT_STATUSES else None, error)

        with self._write() as db:
            db.executemany("INSERT INTO units (run_id, unit, axes, fingerprint, status, "
                           "started_at, finished_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           rows())

    def unit_status(self, run_id: int, unit: str, status: str, *, error: str | None = None,
                    wall_s: float | None = None, tasks: int | None = None) -> None:
        """Moves one unit to ``status``: 'running' stamps started_at; a final status stamps
        finished_at and records error, tasks and wall_s (given, else finished_at - started_at
        where the unit was marked running)."""
        _check_status(status, UNIT_STATUSES, "unit status")
        now, run_id = _now(), int(run_id)
        with self._write() as db:
            row = db.execute("SELECT started_at FROM units WHERE run_id = ? AND unit = ?",
                             (run_id, unit)).fetchone()
            if row is None:
                raise KeyError(f"unit {unit!r} is not in run {run_id} of {self.path}")
            if status == "running":
                db.execute("UPDATE units SET status = ?, started_at = ?, finished_at = NULL "
                           "WHERE run_id = ? AND unit = ?", (status, now, run_id, unit))
            elif status in FINAL_UNIT_STATUSES:
                if wall_s is None and row["started_at"] is not None:
                    wall_s = _seconds_between(row["started_at"], now)
                db.execute("UPDATE units SET status = ?, finished_at = ?, error = ?, wall_s = ?, "
                           "tasks = ? WHERE run_id = ? AND unit = ?",
                           (status, now, error, _number(wall_s, float), _number(tasks), run_id,
                            unit))
            else:
                db.execute("UPDATE units SET status = ? WHERE run_id = ? AND unit = ?",
                           (status, run_id, unit))

    def end_run(self, run_id: int, status: str, *, tasks: int | None = None) -> None:
        """Closes a run as 'succeeded', 'failed' or 'interrupted': finished_at now, wall_s, and
        the outcome counts taken from its units. Units it never finished ('pending' or
        'running') become 'interrupted', so no run that ended leaves a unit running."""
        _check_status(status, RUN_STATUSES[1:], "run status")
        with self._write() as db:
            _close_run(db, int(run_id), status, _now(), _number(tasks))

    def mark_interrupted(self) -> list[int]:
        """Closes every run still 'running' as 'interrupted' and returns their ids.

        Call it holding the output lock, before ``begin_run``: then no live process owns such
        a run; it was left by a process that died (SIGKILL, power loss, a killed batch job).
        Its finished_at is the last moment the ledger saw it alive (the latest timestamp of the
        run or its units); its unfinished units become 'interrupted'.
        """
        with self._write() as db:
            ids = [r[0] for r in db.execute(
                "SELECT run_id FROM runs WHERE status = 'running' ORDER BY run_id")]
            for run_id in ids:
                last_seen = db.execute(
                    "SELECT max(t) FROM (SELECT started_at AS t FROM runs WHERE run_id = :r "
                    "UNION ALL SELECT started_at FROM units WHERE run_id = :r "
                    "UNION ALL SELECT finished_at FROM units WHERE run_id = :r)",
                    {"r": run_id}).fetchone()[0]
                _close_run(db, run_id, "interrupted", last_seen, None)
        return ids

    # -- reading ---------------------------------------------------------------------------

    def runs(self) -> pd.DataFrame:
        """Every run, oldest first, one row each with every column of ``runs`` (``command``
        as a list)."""
        return self._select("SELECT * FROM runs ORDER BY run_id")

    def latest_run(self) -> int | None:
        """The id of the newest run, or None in an empty ledger."""
        with self._guard:
            return self._db.execute("SELECT max(run_id) FROM runs").fetchone()[0]

    def units(self, run_id: int | None = None) -> pd.DataFrame:
        """The units of one run (default: the latest) in plan order, every column of ``units``
        (``axes`` as a dict). An empty ledger gives no rows; an unknown run is an InputError."""
        if run_id is None:
            run_id = self.latest_run()
        elif not self._select("SELECT run_id FROM runs WHERE run_id = ?",
                              (int(run_id),)).shape[0]:
            ids = self.runs()["run_id"]
            known = ("no runs yet" if not len(ids) else f"run {ids.min()}" if len(ids) == 1
                     else f"runs {ids.min()}-{ids.max()}")
            raise InputError(f"run {run_id} is not in {self.path} ({known}); choose one of "
                             "those shown by `cohort status`")
        # rowid: the order set_units inserted them, i.e. the plan's order
        return self._select("SELECT * FROM units WHERE run_id = ? ORDER BY rowid",
                            (None if run_id is None else int(run_id),))

    def last_committed(self) -> dict[str, str]:
        """Unit -> fingerprint of its latest 'computed' result over all runs, unless a later
        run retired the unit (its results were removed). Informational: whether a result is
        committed is decided by what is on disk, not by the ledger."""
        frame = self._select(
            "SELECT unit, fingerprint FROM ("
            " SELECT unit, status, fingerprint,"
            "  row_number() OVER (PARTITION BY unit ORDER BY run_id DESC) AS newest"
            " FROM units WHERE status IN ('computed', 'retired'))"
            " WHERE newest = 1 AND status = 'computed' ORDER BY unit")
        return dict(zip(frame["unit"], frame["fingerprint"]))


def _close_run(db: sqlite3.Connection, run_id: int, status: str, finished_at: str,
               tasks: int | None) -> None:
    """Inside a write transaction: ends a run at ``finished_at`` and fills its counts."""
    started = db.execute("SELECT started_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if started is None:
        raise KeyError(f"run {run_id} is not in the ledger")
    db.execute("UPDATE units SET status = 'interrupted', finished_at = ? "
               "WHERE run_id = ? AND status IN ('pending', 'running')", (finished_at, run_id))
    counts = dict(db.execute("SELECT status, count(*) FROM units WHERE run_id = ? "
                             "GROUP BY status", (run_id,)).fetchall())
    db.execute("UPDATE runs SET status = ?, finished_at = ?, wall_s = ?, "
               "tasks = coalesce(?, tasks), computed = ?, skipped = ?, failed = ?, invalid = ?, "
               "retired = ? WHERE run_id = ?",
               (status, finished_at, _seconds_between(started["started_at"], finished_at), tasks,
                *(counts.get(c, 0) for c in COUNTED), run_id))


# -- cohort status ---------------------------------------------------------------------------

def status_report(output: str | Path, *, as_json: bool = False, run_id: int | None = None,
                  all_runs: bool = False) -> str:
    """What ``cohort status OUTPUT`` prints: the latest runs (all with ``all_runs``) and the
    units of one run (default the latest) with a summary line; with ``as_json`` a JSON object
    ``{"runs": [...], "units": [...]}`` of the same rows with every column."""
    with Ledger(output, create=False) as ledger:
        chosen = run_id if run_id is not None else ledger.latest_run()
        units = ledger.units(chosen)  # before runs(): a run begun meanwhile is listed too
        runs = ledger.runs()
    shown = runs if all_runs else runs.tail(RUNS_SHOWN)
    if as_json:
        return json.dumps({"runs": _records(shown), "units": _records(units)}, indent=2)
    if runs.empty:
        return f"no runs recorded in {ledger.path} yet"
    scope = (f"all {len(runs)}" if all_runs or len(runs) <= RUNS_SHOWN
             else f"latest {RUNS_SHOWN} of {len(runs)}; --all shows every run")
    run = runs.set_index("run_id").loc[chosen]
    return "\n".join([f"runs in {ledger.path} ({scope}):", _runs_table(shown), "",
                      _run_summary(chosen, run, units), _units_table(units)])


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: missing values None, numpy scalars plain Python."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()} for row in rows]


def _present(value) -> bool:
    return not (value is None or pd.isna(value))


def _cell(value, digits: int = 1) -> str:
    if not _present(value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _text_table(frame: pd.DataFrame, headers: dict[str, str]) -> str:
    """Plain text columns: text left-aligned, numbers right-aligned, missing values blank."""
    columns = []
    for name, header in headers.items():
        cells = [_cell(v) for v in frame[name].tolist()]
        numeric = pd.api.types.is_numeric_dtype(frame[name])
        width = max([len(header), *map(len, cells)])
        columns.append([(c.rjust if numeric else c.ljust)(width) for c in [header, *cells]])
    return "\n".join("  ".join(row).rstrip() for row in zip(*columns))


def _runs_table(runs: pd.DataFrame) -> str:
    return _text_table(runs, {
        "run_id": "run", "sweep": "sweep", "status": "status", "started_at": "started_at (UTC)",
        "wall_s": "wall_s", "units_total": "units", **{c: c for c in COUNTED},
        "workers": "workers", "tasks": "tasks"})


def _one_line(text: str | None, width: int = 100) -> str | None:
    """The first non-empty line of an error, cut to ``width`` characters ("..." marks a cut)."""
    if text is None:
        return None
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first, more = (lines[0] if lines else ""), len(lines) > 1
    if len(first) > width or (more and len(first) > width - 4):
        first, more = first[:width - 4].rstrip(), True
    return first + " ..." if more else first


def _units_table(units: pd.DataFrame) -> str:
    if units.empty:
        return "(no units recorded)"
    shown = units.assign(error=units["error"].map(_one_line))
    return _text_table(shown, {"unit": "unit", "status": "status", "wall_s": "wall_s",
                               "error": "error"})


def _run_summary(run_id: int, run: pd.Series, units: pd.DataFrame) -> str:
    """One line: the outcome counts (live from the units, so a running run shows progress),
    wall time, and the cluster the run used."""
    counts = units["status"].value_counts()
    outcome = [f"{counts.get(c, 0)} {c}" for c in COUNTED]
    outcome += [f"{counts[c]} {c}" for c in ("running", "pending", "interrupted") if c in counts]
    if run["status"] == "running":
        seconds = _seconds_between(run["started_at"], _now())
        when = f"running since {run['started_at']} ({seconds:.0f} s so far)"
    else:
        when = f"{run['status']}, wall {_cell(run['wall_s'])} s"
    total = run["units_total"] if _present(run["units_total"]) else len(units)
    cluster = f"{_cell(run['workers']) or '?'} workers, {_cell(run['threads']) or '?'} threads"
    if _present(run["scheduler"]):
        cluster += f" on {run['scheduler']}"
    if run["status"] == "running" and _present(run["dashboard"]):
        cluster += f", dashboard {run['dashboard']}"
    tasks = f"; {run['tasks']} tasks" if _present(run["tasks"]) else ""
    return (f"run {run_id} of sweep {run['sweep']}: {when}; {', '.join(outcome)} of {total} "
            f"units; {cluster}{tasks}")
