"""Run a sweep on a cron schedule in a long-lived process (README: Scheduling).

``cron_trigger`` reads a crontab expression with crontab's meaning (day-of-week 0 and 7 are
Sunday) into an APScheduler 3 ``CronTrigger``. ``run_on_schedule`` calls a function at every
fire time of a trigger, never two calls at once, until SIGINT/SIGTERM or ``max_runs``;
``command_runner`` makes that function run a command (``cohort sweep``) in a child process.
"""

from __future__ import annotations

import datetime
import logging
import shlex
import signal
import subprocess
import threading
import time
import zoneinfo
from collections.abc import Callable

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from engine.errors import InputError

logger = logging.getLogger(__name__)

EXPECTED = ("expected 5 fields 'minute hour day-of-month month day-of-week' such as '0 2 * * *' "
            "(or 6 with seconds first: 'second minute hour day-of-month month day-of-week')")
FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
BOUNDS = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31),
          "month": (1, 12), "day-of-week": (0, 7)}
NAMES = {"month": {m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul",
                                               "aug", "sep", "oct", "nov", "dec"], 1)},
         "day-of-week": {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri",
                                                     "sat"])}}
NICKNAMES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
             "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
             "@hourly": "0 * * * *"}
# APScheduler 3 numbers weekdays from Monday = 0 (its from_crontab passes crontab's numbers
# through unchanged, so "0" would mean Monday there); naming the days avoids the mismatch.
APSCHEDULER_WEEKDAY = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


class CrontabTrigger(CronTrigger):
    """A ``CronTrigger`` that keeps the crontab expression it was made from, for the log."""

    __slots__ = ("expression",)

    def __str__(self) -> str:
        return f"cron {self.expression!r} ({self.timezone})"


def _value(field: str, text: str) -> int:
    """One number or name of a crontab field, checked against the field's bounds."""
    low, high = BOUNDS[field]
    if not text:
        raise ValueError("a value is missing")
    if text.isascii() and text.isdigit():
        number = int(text)
    elif text.lower() in NAMES.get(field, {}):
        return NAMES[field][text.lower()]
    else:
        names = f" or a name ({', '.join(NAMES[field])})" if field in NAMES else ""
        raise ValueError(f"{text!r} is not a number{names}")
    if not low <= number <= high:
        raise ValueError(f"{number} is outside {low}-{high}")
    return number


def _field_values(field: str, text: str) -> list[int]:
    """The values a crontab field selects: lists (``a,b``), ranges (``a-b``), steps (``*/n``,
    ``a-b/n``, and ``a/n`` = from a to the field's end every n), names for months and days."""
    low, high = BOUNDS[field]
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        if span == "*":
            first, last = low, high
        else:
            first_text, dash, last_text = span.partition("-")
            first = _value(field, first_text)
            last = _value(field, last_text) if dash else (high if slash else first)
        if first > last:
            hint = " (a range through Sunday ends in 7, e.g. 5-7)" if field == "day-of-week" else ""
            raise ValueError(f"range {span!r} runs backwards{hint}")
        if slash and not (step_text.isascii() and step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"step {step_text!r} in {item!r} is not a positive whole number")
        values.update(range(first, last + 1, int(step_text) if slash else 1))
    return sorted(values)


def _zone(timezone: str | datetime.tzinfo | None) -> datetime.tzinfo | None:
    if timezone is None or isinstance(timezone, datetime.tzinfo):
        return timezone
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InputError(f"unknown time zone {timezone!r}; use an IANA name such as "
                         "Europe/Berlin or UTC") from None


def cron_trigger(expr: str, timezone: str | datetime.tzinfo | None = None) -> CrontabTrigger:
    """An APScheduler ``CronTrigger`` firing when crontab would run ``expr``, in ``timezone``
    (an IANA name; default: the machine's local zone).

    Accepts crontab's 5 fields, or 6 with a first field of seconds, and the nicknames
    ``@hourly``, ``@daily``/``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``.
    Day-of-week 0 and 7 are Sunday. Crontab runs on days matching day-of-month OR day-of-week
    when neither field starts with ``*``; CronTrigger can only match both, so that form is
    refused rather than run on fewer days than crontab would.
    """
    fields = NICKNAMES.get(expr.strip().lower(), expr).split()
    if len(fields) not in (5, 6):
        raise InputError(f"cron expression {expr!r} has {len(fields)} fields; {EXPECTED}")
    text = dict(zip(FIELDS, fields if len(fields) == 6 else ["0", *fields]))
    values = {}
    for field in FIELDS:
        try:
            values[field] = _field_values(field, text[field])
        except ValueError as e:
            raise InputError(f"cron expression {expr!r}, {field} field {text[field]!r}: {e}; "
                             f"{EXPECTED}") from None
    dom, dow = text["day-of-month"], text["day-of-week"]
    if not dom.startswith("*") and not dow.startswith("*"):
        raise InputError(f"cron expression {expr!r} restricts both the day-of-month field "
                         f"({dom!r}) and the day-of-week field ({dow!r}): crontab runs on days "
                         "matching either, this scheduler only on days matching both; write one "
                         "of the two as * (e.g. '0 2 1 * *' or '0 2 * * mon')")

    def listed(field):
        return "*" if text[field] == "*" else ",".join(map(str, values[field]))

    weekdays = dict.fromkeys(APSCHEDULER_WEEKDAY[d] for d in values["day-of-week"])
    trigger = CrontabTrigger(
        second=listed("second"), minute=listed("minute"), hour=listed("hour"),
        day=listed("day-of-month"), month=listed("month"),
        day_of_week="*" if dow == "*" else ",".join(weekdays), timezone=_zone(timezone))
    trigger.expression = expr
    if trigger.get_next_fire_time(None, datetime.datetime.now(trigger.timezone)) is None:
        raise InputError(f"cron expression {expr!r} never fires: no date matches day-of-month "
                         f"{dom!r}, month {text['month']!r} and day-of-week {dow!r}")
    return trigger


def command_runner(argv: list[str]) -> Callable[[], None]:
    """A ``run_once`` that runs ``argv`` (e.g. ``cohort sweep SWEEP.yaml``) as a child process
    in a session of its own, and raises ``RuntimeError`` naming the command and its exit
    status when it does not exit 0 (``cohort sweep`` exits 1 when a unit failed).

    Why a child: Ctrl-C at a terminal signals the whole foreground process group, which
    would kill a local Dask cluster's worker processes in the middle of a run and leave
    the run waiting for them; in its own session the sweep and its workers never see it,
    so the scheduler can let the run finish. Each run also starts from a fresh interpreter.
    Its output goes where the scheduler's goes.
    """
    def run_once() -> None:
        code = subprocess.run(argv, start_new_session=True).returncode
        if code:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise RuntimeError(f"{shlex.join(argv)} {how}")
    return run_once


def _say(message: str) -> None:
    print(message, flush=True)  # flushed: a long-lived process often writes to a log file


def _stop_on_signals(stop: threading.Event, is_running: Callable[[], bool],
                     log: Callable[[str], object]) -> dict:
    """Install SIGINT/SIGTERM handlers that set ``stop``; return the handlers they replace.

    The first signal asks for a clean stop; a second one (Ctrl-C twice, kill twice) kills
    the process at once: the default action, not KeyboardInterrupt, which would wait for
    the run's thread at exit. The main loop polls ``stop`` without taking its lock, so
    setting it here cannot deadlock.
    """
    def handle(signum, frame):
        log(f"{signal.Signals(signum).name}: stopping "
            + ("after the current run finishes (signal again to stop at once)"
               if is_running() else "now"))
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handle)
    return previous


def run_on_schedule(run_once: Callable[[], object], trigger, *, name: str,
                    max_runs: int | None = None,
                    log: Callable[[str], object] = _say) -> int:
    """Call ``run_once`` at every fire time of ``trigger`` (an APScheduler trigger) until
    SIGINT/SIGTERM or ``max_runs`` runs; return the number of runs made.

    Never two runs at once: a fire time that comes while a run is going is skipped (and
    logged); fire times missed while the process could not act (a suspended machine) are
    run once, however late. An exception ends that run only: its message is logged (the
    traceback at debug level) and the schedule goes on. A signal stops the process after
    the current run, or at once when idle.
    """
    if max_runs is not None and max_runs < 1:
        raise InputError(f"max runs is {max_runs}; give a number of runs of at least 1")
    stop = threading.Event()
    running = threading.Event()
    runs = 0

    def next_fire():
        return trigger.get_next_fire_time(None, datetime.datetime.now(datetime.UTC))

    def one_run():
        nonlocal runs
        if stop.is_set():
            return
        running.set()
        started = time.perf_counter()
        now = datetime.datetime.now(getattr(trigger, "timezone", None))
        log(f"{name}: run {runs + 1} started at {now.isoformat(' ', 'seconds')}")
        try:
            run_once()
            outcome = "finished"
        except Exception as e:
            outcome = f"failed ({type(e).__name__}: {e})"
            logger.debug("%s: run %d failed", name, runs + 1, exc_info=True)
        runs += 1
        running.clear()
        if max_runs is not None and runs >= max_runs:
            stop.set()
        log(f"{name}: run {runs} {outcome} after {time.perf_counter() - started:.1f} s; "
            + ("stopping" if stop.is_set() else f"next run at {next_fire()}"))

    def skipped(event):
        times = ", ".join(str(t) for t in event.scheduled_run_times)
        log(f"{name}: run due at {times} skipped: the previous run is still going")

    scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)})
    scheduler.add_listener(skipped, EVENT_JOB_MAX_INSTANCES)
    scheduler.add_job(one_run, trigger, id=name, name=name, max_instances=1, coalesce=True,
                      misfire_grace_time=None)
    previous = _stop_on_signals(stop, running.is_set, lambda m: log(f"{name}: {m}"))
    log(f"{name}: scheduled on {trigger}; first run at {next_fire()}")
    try:
        scheduler.start()
        while not stop.is_set():
            time.sleep(0.1)
    finally:
        scheduler.shutdown(wait=True)  # lets a run in progress finish
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return runs
