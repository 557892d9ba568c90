#!/usr/bin/env python3
"""Inputs for the survival R reference fixtures in this folder (see README.md).

Subcommands
-----------
all-survival SAMPLES.tsv OUT.tsv
    The ALL cohort's survival outcome: ``time_days`` = days from ``diagnosis`` to ``date last
    seen`` (both m/d/yyyy; anything else, e.g. ``00/09/01``, is missing), ``relapse`` = 1 for
    ``relapse`` TRUE, 0 for FALSE, NA where missing; plus ``age``, ``sex`` and ``mol.biol``
    copied. One row per sample of the sheet, in its order.

synthetic OUTDIR
    A seeded synthetic survival cohort (numpy default_rng(20261122)): 120 samples with integer
    times 1..30 (many ties) and censoring, covariates ``age`` (3 missing) and ``arm`` (A/B/C),
    stratum ``site`` (S1/S2), and 40 features (float32 values, NA = missing) of which some are
    special (see ``synthetic_features.tsv``). Writes synthetic_expression.tsv,
    synthetic_samples.tsv and synthetic_features.tsv.

Only numpy and pandas are needed.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20261122
N_SAMPLES = 120
N_FEATURES = 40


def _shared_inputs():
    """../make_inputs.py (same file name, so loaded by path): one f32_text for all fixtures."""
    spec = importlib.util.spec_from_file_location(
        "r_reference_inputs", Path(__file__).resolve().parent.parent / "make_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


f32_text = _shared_inputs().f32_text


def days(text: pd.Series) -> pd.Series:
    ok = text.str.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", na=False)
    return pd.to_datetime(text.where(ok), format="%m/%d/%Y")


def cmd_all_survival(samples: str, out: str) -> None:
    s = pd.read_csv(samples, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    s = s.replace("NA", np.nan)
    time = (days(s["date last seen"]) - days(s["diagnosis"])).dt.days
    relapse = s["relapse"].map({"TRUE": 1, "FALSE": 0})
    d = pd.DataFrame({"sample_id": s["sample_id"],
                      "time_days": time.map(lambda v: "NA" if pd.isna(v) else str(int(v))),
                      "relapse": relapse.map(lambda v: "NA" if pd.isna(v) else str(int(v))),
                      "age": s["age"].fillna("NA"), "sex": s["sex"].fillna("NA"),
                      "mol.biol": s["mol.biol"].fillna("NA")})
    d.to_csv(out, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    both = (d.time_days != "NA") & (d.relapse != "NA")
    print(f"wrote {out}: {both.sum()} samples with time and relapse status, "
          f"{(d.relapse[both] == '1').sum()} relapses", file=sys.stderr)


def cmd_synthetic(outdir: str) -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    n, f = N_SAMPLES, N_FEATURES
    x = rng.normal(8.0, 1.0, size=(f, n))
    age = np.round(rng.normal(55.0, 10.0, size=n))
    arm = rng.choice(np.array(["A", "B", "C"]), size=n)
    site = np.where(rng.random(n) < 0.5, "S1", "S2")
    log_hazard = (0.8 * (x[0] - 8.0) - 0.5 * (x[1] - 8.0) + 0.03 * (age - 55.0)
                  + 0.4 * (arm == "B") - 0.3 * (arm == "C"))
    t_event = rng.exponential(1.0 / (0.08 * np.exp(log_hazard)))
    t_censor = rng.uniform(4.0, 45.0, size=n)
    time = np.minimum(np.ceil(np.minimum(t_event, t_censor)), 30.0)
    status = ((t_event <= t_censor) & (np.ceil(t_event) <= 30.0)).astype(int)
    kind = np.array(["normal"] * f, dtype=object)
    kind[:2] = "prognostic"
    missing = rng.random(size=(f, n)) < 0.1
    missing[:10] = False
    missing[30:] = False
    x[missing] = np.nan
    kind[10:30] = np.where(kind[10:30] == "normal", "missing_10pct", kind[10:30])
    age_missing = rng.choice(n, size=3, replace=False)

    def put(i, k, row):
        x[i] = row
        kind[i] = k

    put(30, "constant", np.full(n, 5.0))
    put(31, "minus_time_monotone_continuous", -time + 0.0)
    censored = np.flatnonzero(status == 0)
    high = rng.choice(censored, size=min(20, censored.size), replace=False)
    row = np.zeros(n)
    row[high] = rng.uniform(1.0, 3.0, size=high.size)
    put(32, "only_censored_high_monotone", row)
    put(33, "collinear_with_age", 2.0 * age + 1.0)
    three = np.full(n, np.nan)
    keep = rng.choice(n, size=3, replace=False)
    three[keep] = rng.normal(8.0, 1.0, size=3)
    put(34, "three_values", three)
    put(35, "rounded_1dp_ties", np.round(rng.normal(8.0, 0.4, size=n), 1))
    s2_missing = rng.normal(8.0, 1.0, size=n)
    s2_missing[site == "S2"] = np.nan
    put(36, "missing_in_site_S2", s2_missing)
    x = x.astype(np.float32).astype(np.float64)
    age_text = np.array([f"{a:g}" for a in age], dtype=object)
    age_text[age_missing] = "NA"
    x[33, age_missing] = np.nan  # the collinear feature is missing where age is

    samples = [f"T{i:03d}" for i in range(1, n + 1)]
    features = [f"feat_{i:02d}" for i in range(1, f + 1)]
    text = f32_text(x)
    lines = ["\t".join(["feature_id", *samples])]
    lines += ["\t".join([fid, *r]) for fid, r in zip(features, text)]
    (out / "synthetic_expression.tsv").write_text("\n".join(lines) + "\n")
    pd.DataFrame({"sample_id": samples, "time": [f"{t:g}" for t in time], "status": status,
                  "age": age_text, "arm": arm, "site": site}).to_csv(
        out / "synthetic_samples.tsv", sep="\t", index=False)
    pd.DataFrame({"feature_id": features, "kind": kind}).to_csv(
        out / "synthetic_features.tsv", sep="\t", index=False)
    print(f"wrote {out}/synthetic_*.tsv: {f} features x {n} samples, {status.sum()} events, "
          f"{np.unique(time[status == 1]).size} distinct event times", file=sys.stderr)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "all-survival":
        cmd_all_survival(argv[1], argv[2])
    elif len(argv) == 2 and argv[0] == "synthetic":
        cmd_synthetic(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
