"""Cron scheduling: crontab semantics of the trigger, and a schedule that never overlaps runs."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import threading
import time
from zoneinfo import ZoneInfo

import pytest

from engine.errors import InputError
from engine.sweep.schedule import command_runner, cron_trigger, run_on_schedule

UTC = ZoneInfo("UTC")


def at(*args, tz=UTC) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=tz)


# 2026-11-18 is a Wednesday (checked by test_worked_dates_have_the_weekdays_claimed).
NEXT_FIRE = [
    # Sunday as 0, 7 and by name: Wed 18th -> the coming Sunday, the 22nd, at 02:00.
    ("0 2 * * 0", at(2026, 11, 18, 12), at(2026, 11, 22, 2)),
    ("0 2 * * 7", at(2026, 11, 18, 12), at(2026, 11, 22, 2)),
    ("0 2 * * sun", at(2026, 11, 18, 12), at(2026, 11, 22, 2)),
    # Every 15 minutes 9:00-17:45 on weekdays: from 12:01 on a Wednesday, 12:15 that day ...
    ("*/15 9-17 * * mon-fri", at(2026, 11, 18, 12, 1), at(2026, 11, 18, 12, 15)),
    # ... and from Friday 17:46 (after the last slot, 17:45) over the weekend to Monday 9:00.
    ("*/15 9-17 * * mon-fri", at(2026, 11, 20, 17, 46), at(2026, 11, 23, 9)),
    # Midnight on the first of the month: December, and over the year end to January.
    ("0 0 1 * *", at(2026, 11, 18, 12), at(2026, 12, 1)),
    ("0 0 1 * *", at(2026, 12, 15), at(2027, 1, 1)),
    # Mondays in February (day-of-month *, so only day-of-week counts): 2027-01-01 is a
    # Friday (2026 has 365 days, 52 weeks + 1 day after Thursday 2026-01-01), so Feb 1,
    # 31 days later, is Friday + 3 = Monday.
    ("30 4 * feb mon", at(2026, 11, 18, 12), at(2027, 2, 1, 4, 30)),
    # Mon-Fri every second day = Mon, Wed, Fri: Wednesday noon -> Friday midnight.
    ("0 0 * * 1-5/2", at(2026, 11, 18, 12), at(2026, 11, 20)),
    # "5/20" = from minute 5 to the end every 20: 5, 25, 45.
    ("5/20 * * * *", at(2026, 11, 18, 12, 6), at(2026, 11, 18, 12, 25)),
    # 29 February: 2027 is not a leap year, 2028 is.
    ("0 12 29 2 *", at(2026, 11, 18, 12), at(2028, 2, 29, 12)),
    # @weekly = "0 0 * * 0": Sunday midnight.
    ("@weekly", at(2026, 11, 18, 12), at(2026, 11, 22)),
    # Seconds first (6 fields): every 20 seconds, from 12:00:01 -> 12:00:20.
    ("*/20 * * * * *", at(2026, 11, 18, 12, 0, 1), at(2026, 11, 18, 12, 0, 20)),
]


@pytest.mark.parametrize(("expr", "now", "expected"), NEXT_FIRE)
def test_next_fire_time_follows_crontab(expr, now, expected):
    assert cron_trigger(expr, "UTC").get_next_fire_time(None, now) == expected


def test_worked_dates_have_the_weekdays_claimed():
    """The weekday reasoning above, checked with the standard library's calendar."""
    assert at(2026, 11, 18).strftime("%A") == "Wednesday"
    assert at(2026, 11, 22).strftime("%A") == "Sunday"
    assert at(2026, 11, 23).strftime("%A") == "Monday"
    assert at(2027, 2, 1).strftime("%A") == "Monday"
    assert at(2026, 11, 20).strftime("%A") == "Friday"


def test_timezone_is_the_named_zone():
    """02:00 in Berlin in November (CET, UTC+1) is 01:00 UTC."""
    fire = cron_trigger("0 2 * * *", "Europe/Berlin").get_next_fire_time(
        None, at(2026, 11, 18, 12))
    assert fire == at(2026, 11, 19, 1)
    assert fire == at(2026, 11, 19, 2, tz=ZoneInfo("Europe/Berlin"))


def test_daylight_saving_changes_as_documented():
    """Berlin, 02:00 daily. 2026-10-25 (clocks back at 03:00 CEST to 02:00 CET): 02:00
    happens twice, at 00:00 and 01:00 UTC, and the trigger fires at both (cron would fire
    once; the README says so). 2027-03-28 (clocks forward at 02:00 CET to 03:00 CEST): 02:00
    does not exist; the trigger fires at 01:00 UTC, the moment the clocks jump, once."""
    trigger = cron_trigger("0 2 * * *", "Europe/Berlin")
    first = trigger.get_next_fire_time(None, at(2026, 10, 24, 12))
    second = trigger.get_next_fire_time(first, first)
    # (Compared in UTC: Python never equates a wall time of a repeated hour with another zone.)
    assert [t.astimezone(UTC) for t in (first, second)] == [at(2026, 10, 25, 0),
                                                            at(2026, 10, 25, 1)]
    spring = trigger.get_next_fire_time(None, at(2027, 3, 27, 12))
    assert spring.astimezone(UTC) == at(2027, 3, 28, 1)
    assert trigger.get_next_fire_time(spring, spring).astimezone(UTC) == at(2027, 3, 29, 0)


# Each expression with a plain predicate saying what crontab means by it (datetime.weekday():
# Monday = 0 ... Sunday = 6, unlike crontab's Sunday = 0).
MEANINGS = {
    "*/15 9-17 * * mon-fri": lambda t: t.minute % 15 == 0 and 9 <= t.hour <= 17
    and t.weekday() < 5,
    "0 0,12 * * 0,6": lambda t: t.minute == 0 and t.hour in (0, 12) and t.weekday() in (5, 6),
    "0 0 * * */2": lambda t: t.minute == 0 and t.hour == 0 and t.weekday() in (6, 1, 3, 5),
    "5/20 8-10/2 * * 5-7": lambda t: t.minute in (5, 25, 45) and t.hour in (8, 10)
    and t.weekday() in (4, 5, 6),
    "0 3 17-19 nov *": lambda t: (t.minute, t.hour, t.month) == (0, 3, 11) and 17 <= t.day <= 19,
}


@pytest.mark.parametrize("expr", MEANINGS)
def test_a_week_of_fire_times_matches_every_minute_checked(expr):
    """A fake clock: step the trigger through a week, feeding each fire time back as
    ``previous`` and ``now``, and compare with every minute of the week that the
    predicate accepts."""
    start, end = at(2026, 11, 16), at(2026, 11, 23)
    trigger = cron_trigger(expr, "UTC")
    fired, t = [], trigger.get_next_fire_time(None, start)
    while t < end:
        fired.append(t)
        t = trigger.get_next_fire_time(t, t)
    minutes = (start + datetime.timedelta(minutes=i) for i in range(7 * 24 * 60))
    assert fired == [t for t in minutes if MEANINGS[expr](t)]
    assert fired  # every expression fires at least once in the week


@pytest.mark.parametrize(("expr", "fragments"), [
    ("0 2 * *", ["has 4 fields"]),
    ("0 2 * * * * *", ["has 7 fields"]),
    ("0 25 * * *", ["hour field '25'", "25 is outside 0-23"]),
    ("60 2 * * *", ["minute field '60'", "outside 0-59"]),
    ("0 2 * * 8", ["day-of-week field '8'", "outside 0-7"]),
    ("0 2 0 * *", ["day-of-month field '0'", "outside 1-31"]),
    ("0 2 * foo *", ["month field 'foo'", "not a number or a name (jan"]),
    ("0 2 * * sat-sun", ["day-of-week field 'sat-sun'", "runs backwards", "ends in 7"]),
    ("*/0 2 * * *", ["minute field '*/0'", "step '0'"]),
    ("0 2 1, * *", ["day-of-month field '1,'", "a value is missing"]),
    ("x 2 * * *", ["minute field 'x'", "'x' is not a number"]),
    ("@reboot", ["has 1 fields"]),
])
def test_bad_expression_names_the_field_and_the_form(expr, fragments):
    with pytest.raises(InputError) as e:
        cron_trigger(expr)
    message = str(e.value)
    assert f"cron expression {expr!r}" in message
    assert "minute hour day-of-month month day-of-week" in message
    for fragment in fragments:
        assert fragment in message


def test_day_of_month_and_day_of_week_together_are_refused():
    """Crontab's OR rule (the 1st or any Monday) cannot be expressed by CronTrigger, which
    would fire only on Mondays that are the 1st."""
    with pytest.raises(InputError, match=r"'0 2 1 \* mon' restricts both the day-of-month "
                                         r"field \('1'\) and the day-of-week field \('mon'\)"):
        cron_trigger("0 2 1 * mon")
    # A field starting with * keeps crontab's AND rule, which CronTrigger shares: odd days
    # that are Mondays. 2026-11-23 (a Monday, odd): the first after Wednesday the 18th.
    assert cron_trigger("0 2 */2 * mon", "UTC").get_next_fire_time(
        None, at(2026, 11, 18)) == at(2026, 11, 23, 2)


def test_expressions_that_never_fire_and_unknown_zones_are_refused():
    with pytest.raises(InputError, match="'0 0 30 2 \\*' never fires"):
        cron_trigger("0 0 30 2 *")
    with pytest.raises(InputError, match="unknown time zone 'Mars/Olympus'.*Europe/Berlin"):
        cron_trigger("0 2 * * *", "Mars/Olympus")


# Running on a schedule: real seconds-level triggers, each test bounded by max_runs or a
# signal, with a watchdog that stops a run_on_schedule that would otherwise hang.

EVERY_SECOND = "* * * * * *"


@pytest.fixture
def watchdog():
    timer = threading.Timer(15, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    yield
    timer.cancel()


def test_runs_never_overlap_and_fires_during_a_run_are_skipped(watchdog):
    """Fires every second, each run takes 1.5 s: the fire during each run is skipped."""
    intervals, messages = [], []

    def slow_run():
        start = time.monotonic()
        time.sleep(1.5)
        intervals.append((start, time.monotonic()))

    runs = run_on_schedule(slow_run, cron_trigger(EVERY_SECOND), name="sweep", max_runs=2,
                           log=messages.append)
    assert runs == 2 and len(intervals) == 2
    assert messages[0].startswith("sweep: scheduled on cron '* * * * * *' (")
    (_, end1), (start2, _) = intervals
    assert start2 >= end1
    assert any("skipped: the previous run is still going" in m for m in messages)
    assert any(m.startswith("sweep: run 1 finished after ") and "s; next run at " in m
               for m in messages)


def test_a_failing_run_does_not_stop_the_schedule(watchdog, caplog):
    caplog.set_level(logging.DEBUG, logger="engine.sweep.schedule")
    calls, messages = [], []

    def fails_first():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("cohort store is locked")

    runs = run_on_schedule(fails_first, cron_trigger(EVERY_SECOND), name="nightly", max_runs=2,
                           log=messages.append)
    assert runs == 2 and len(calls) == 2
    assert any("run 1 failed (RuntimeError: cohort store is locked)" in m for m in messages)
    assert any("run 2 finished" in m for m in messages)
    traced = [r for r in caplog.records if r.exc_info]
    assert len(traced) == 1 and "cohort store is locked" in str(traced[0].exc_info[1])


def test_sigterm_during_a_run_stops_after_it_finishes(watchdog):
    started, ended, messages = threading.Event(), [], []
    before = signal.getsignal(signal.SIGTERM)

    def run():
        started.set()
        time.sleep(1.0)
        ended.append(time.monotonic())

    threading.Thread(target=lambda: started.wait(10) and os.kill(os.getpid(), signal.SIGTERM),
                     daemon=True).start()
    runs = run_on_schedule(run, cron_trigger(EVERY_SECOND), name="sweep", log=messages.append)
    assert runs == 1 and len(ended) == 1
    assert any(m.startswith("sweep: SIGTERM: stopping after the current run finishes")
               for m in messages)
    assert signal.getsignal(signal.SIGTERM) is before


def test_max_runs_below_one_is_refused():
    with pytest.raises(InputError, match="max runs is 0"):
        run_on_schedule(lambda: None, cron_trigger(EVERY_SECOND), name="sweep", max_runs=0)


def test_sigint_when_idle_stops_at_once():
    """Next fire on 1 January: SIGINT right after scheduling returns at once, with no run."""
    scheduled, messages = threading.Event(), []
    before = signal.getsignal(signal.SIGINT)

    def log(message):
        messages.append(message)
        if "scheduled on" in message:
            scheduled.set()

    threading.Thread(target=lambda: scheduled.wait(10) and os.kill(os.getpid(), signal.SIGINT),
                     daemon=True).start()
    t0 = time.monotonic()
    runs = run_on_schedule(lambda: None, cron_trigger("0 0 1 1 *"), name="yearly", log=log)
    assert runs == 0 and time.monotonic() - t0 < 5
    assert "yearly: SIGINT: stopping now" in messages
    assert signal.getsignal(signal.SIGINT) is before


def test_a_command_runs_in_its_own_session_and_fails_loudly(tmp_path):
    """The child's session differs from ours (so a terminal's Ctrl-C cannot reach it or the
    Dask workers it starts); a non-zero exit raises, which run_on_schedule logs as a failure."""
    out = tmp_path / "sid"
    command_runner([sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write("
                                          "str(os.getsid(0)))"])()
    assert int(out.read_text()) != os.getsid(0)
    with pytest.raises(RuntimeError, match=r"-c 'raise SystemExit\(3\)' exited with status 3"):
        command_runner([sys.executable, "-c", "raise SystemExit(3)"])()
