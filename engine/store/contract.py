"""The cohort-store contract: what every store written by ``cohort ingest`` holds.

``COHORT_STORE`` is the machine-readable contract; ``schemas/cohort-store.json`` is generated
from it (``python schemas/generate.py``) and a test fails when the two drift apart.
``check_cohort`` validates an opened store against it.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from engine.errors import InputError

SCALES = ("log2", "linear", "counts", "zscore")

COHORT_STORE = {
    "title": "cohort-engine cohort store",
    "description": (
        "One Zarr store per cohort (Zarr format 3, consolidated metadata), opened lazily with "
        "xarray (engine.open_cohort). Genes are independent rows; chunks run along genes only, "
        "all samples in a chunk."
    ),
    "zarr_format": 3,
    "consolidated_metadata": True,
    "dimensions": {
        "gene": "features (genes, probes, transcripts) in matrix row order",
        "sample": "samples (arrays, libraries, biopsies) in matrix column order",
    },
    "variables": {
        "gene": {"dims": ["gene"], "dtype": "string", "required": True, "unique": True,
                 "description": "gene/probe IDs from the matrix's first column"},
        "sample": {"dims": ["sample"], "dtype": "string", "required": True, "unique": True,
                   "description": "sample IDs from the matrix header"},
        "expression": {
            "dims": ["gene", "sample"], "dtype": "float32", "required": True,
            "chunks": "genes only: all samples in every chunk",
            "attributes": {"scale": {"enum": list(SCALES)}},
            "description": "expression values; NaN means missing",
        },
        "counts": {
            "dims": ["gene", "sample"], "dtype": ["int32", "int64"], "required": False,
            "chunks": "the chunks of expression",
            "description": "the integer read counts, written by ingest with scale counts "
                           "(int64 only when a count exceeds 2**31 - 1); expression holds them "
                           "as float32",
        },
    },
    "annotations": {
        "sample": "every other 1-D variable along `sample` is a sample-sheet column under its "
                  "original name, or an annotation the matrix carries (h5ad obs columns, GEO "
                  "!Sample_ fields and characteristics, RCC sample and lane attributes, STAR "
                  "N_ lines): float64 when every value is a number (NaN = missing), else "
                  "string ('' = missing); categoricals and booleans as their labels",
        "gene": "every other 1-D variable along `gene` is a gene-table column or a gene "
                "annotation the matrix carries (GCT Description, featureCounts Chr..Length, "
                "h5ad var columns, RCC code_class/accession/name), float64 or string as for "
                "samples",
    },
    "attributes": {
        "engine_version": "cohort-engine version that wrote the store",
        "ingested_at": "UTC time of ingest, ISO 8601",
        "sources": "list of {role, path, bytes, sha256} for the matrix file(s) (every STAR or RCC "
                   "file), sample sheet and gene table",
        "ingest_options": "the ingest options (format, scale, chunk_genes, drop_unmatched, dropped "
                          "samples; the format's options such as layer or strand; annotations "
                          "renamed or replaced by the sample sheet or gene table)",
    },
    "optional_attributes": {
        "geo_series": "GEO series matrix input: its !Series_ lines as {field: value or list of "
                      "values}",
        "content_sha256": "sha256:<hex> content fingerprint of the store's data files "
                          "(engine.store.content_digest; absent in stores written before it)",
        "appended": "cohort ingest --append: one entry per batch {at, engine_version, "
                    "samples_added, samples, sources, ingest_options}",
        "simulation": "cohort simulate: {model_version, seed, spec (the simulation spec), "
                      "planted_genes (per effect column), gene_sets {path, sha256, planted, "
                      "null, size}}",
    },
}


def _dtype_ok(values: xr.DataArray, expected: str | list[str]) -> bool:
    if isinstance(expected, list):
        return any(_dtype_ok(values, e) for e in expected)
    if expected == "string":
        return values.dtype.kind in "OUT" or isinstance(values.dtype, np.dtypes.StringDType)
    return values.dtype == np.dtype(expected)


def check_cohort(ds: xr.Dataset) -> None:
    """Raise ``InputError`` listing every way ``ds`` departs from ``COHORT_STORE``."""
    problems = []
    for name, spec in COHORT_STORE["variables"].items():
        if name not in ds.variables:
            if spec["required"]:
                problems.append(f"missing variable {name!r}")
            continue
        var = ds[name]
        if list(var.dims) != spec["dims"]:
            problems.append(f"{name!r} has dims {var.dims}, expected {tuple(spec['dims'])}")
        if not _dtype_ok(var, spec["dtype"]):
            expected = spec["dtype"] if isinstance(spec["dtype"], str) else \
                " or ".join(spec["dtype"])
            problems.append(f"{name!r} has dtype {var.dtype}, expected {expected}")
        for attr, rule in spec.get("attributes", {}).items():
            if var.attrs.get(attr) not in rule["enum"]:
                problems.append(f"{name!r} attribute {attr!r} is {var.attrs.get(attr)!r}, "
                                f"expected one of {rule['enum']}")
        if spec.get("unique") and var.to_index().has_duplicates:
            problems.append(f"{name!r} has duplicate IDs")
    if "expression" in ds and ds["expression"].chunks is not None:
        sample_chunks = ds["expression"].chunks[list(ds["expression"].dims).index("sample")]
        if len(sample_chunks) != 1:
            problems.append("'expression' is chunked along samples; chunks must hold all samples")
        if "counts" in ds and ds["counts"].dims == ds["expression"].dims \
                and ds["counts"].chunks != ds["expression"].chunks:
            problems.append("'counts' is chunked differently from 'expression'")
    for name, var in ds.data_vars.items():
        if name in COHORT_STORE["variables"] or var.ndim != 1:
            continue
        if var.dims[0] not in ("gene", "sample"):
            problems.append(f"annotation {name!r} lies along {var.dims[0]!r}, not gene or sample")
        elif not (_dtype_ok(var, "float64") or _dtype_ok(var, "string")):
            problems.append(f"annotation {name!r} has dtype {var.dtype}, expected float64 or string")
    missing = [a for a in COHORT_STORE["attributes"] if a not in ds.attrs]
    if missing:
        problems.append(f"missing store attributes {missing}")
    if problems:
        raise InputError("not a valid cohort store: " + "; ".join(problems)
                         + " (re-create it with `cohort ingest`)")


def contract_json() -> str:
    return json.dumps(COHORT_STORE, indent=2) + "\n"
