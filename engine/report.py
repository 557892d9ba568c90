"""``report.html``: a self-contained page summarising a job's results for a reader."""

from __future__ import annotations

import html
import json

import pandas as pd

TOP = 20


SPEC_KEYS = ("group", "case", "control", "pair_by", "design", "coef", "contrast", "covariate",
             "gene", "stratify_by", "outcome", "event", "time", "split", "interaction",
             "trend", "robust", "features", "gene_sets", "ranking", "genes_from", "metric",
             "permutations", "kcdf", "delta", "fold_change_base", "bootstrap", "gene_set",
             "genes", "k_max", "resamples", "linkage", "distance")
SAMPLE_COLUMNS = 8  # score matrices: the first samples only


def _describe(spec: dict) -> str:
    def shown(value):
        return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) \
            else value

    keys = [k for k in SPEC_KEYS if k != "kcdf" or spec["test"] == "gsva"]
    parts = [f"{k} = <code>{html.escape(str(shown(spec[k])))}</code>" for k in keys
             if spec.get(k) not in (None, False, [], {})]
    return f"<b>{html.escape(spec['test'])}</b>" + (": " + ", ".join(parts) if parts else "")


def _analysis_section(name: str, spec: dict, table: pd.DataFrame) -> str:
    if "p_value" not in table and table.columns[0] == "gene_set":  # a sets x samples matrix
        summary = (f"{len(table)} gene sets x {table.shape[1] - 1} samples; the first "
                   f"{SAMPLE_COLUMNS} samples shown")
        table = table.iloc[:, :SAMPLE_COLUMNS + 1]
    elif "consensus_class" in table:  # consensus clustering: one row per sample
        counts = table["label"].value_counts().sort_index()
        summary = f"{len(table)} samples: " + ", ".join(
            f"{html.escape(str(k))} {v}" for k, v in counts.items())
    else:
        tested = int(table["p_value"].notna().sum()) if "p_value" in table else 0
        summary = f"{tested} of {len(table)} rows tested"
    if "p_adj" in table:
        method = html.escape(spec.get("adjust", "BH"))
        counts = {t: int((table["p_adj"] < t).sum()) for t in (0.05, 0.01)}
        summary += (f"; {counts[0.05]} with {method}-adjusted p &lt; 0.05, {counts[0.01]} with "
                    "p &lt; 0.01")
    head = table.head(TOP)
    return (
        f"<h2>{html.escape(name)}</h2><p>{_describe(spec)}. {summary}. Full table: "
        f"<code>{html.escape(name)}.tsv</code>.</p>"
        + head.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="NA",
                       classes="top", border=0)
    )


def _preprocess_section(record: dict) -> str:
    """The preprocessing steps of each variant, with what they dropped."""
    if not record:
        return ""
    items = []
    for variant, r in record.items():
        steps = []
        for step in r["steps"]:
            shown = {k: v for k, v in step.items() if k not in ("step", "options")}
            steps.append(f"<li><code>{html.escape(step['step'])}</code> "
                         f"{html.escape(json.dumps(step['options']))}"
                         + (f": {html.escape(json.dumps(shown))}" if shown else "") + "</li>")
        items.append(f"<h3>{html.escape(variant)}: {r['genes']} genes x {r['samples']} samples"
                     f"{' (reused)' if r['reused'] else ''}</h3><p>Derived store <code>"
                     f"{html.escape(r['derived_store'])}</code></p><ol>{''.join(steps)}</ol>")
    return "<h2>Preprocessing</h2>" + "".join(items)


def render_report(job: dict, cohort: dict, tables: dict[str, pd.DataFrame], provenance: dict) -> str:
    """The page: the job, the cohort, each analysis with its top genes, and provenance."""
    specs = {a["name"]: a for a in job["analyses"]}
    sections = "".join(_analysis_section(n, specs.get(n) or specs[n.rsplit(".", 1)[0]], t)
                       for n, t in tables.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>cohort-engine report</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}}
table.top{{border-collapse:collapse;font-size:90%}} table.top td,table.top th{{padding:2px 8px;
text-align:right}} table.top tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>cohort-engine report</h1>
<p>Cohort <code>{html.escape(cohort['path'])}</code>: {cohort['genes']} genes x {cohort['samples']}
samples, scale {html.escape(cohort['scale'])}. Seed {job['seed']}. Wall time
{provenance['wall_time_s']:.1f} s on {provenance['cluster']['workers']} workers
({provenance['cluster']['threads']} threads). Engine {html.escape(provenance['engine_version'])}.
Top {TOP} rows per analysis by p-value.</p>
{_preprocess_section(provenance.get("preprocess") or {})}
{sections}
<h2>Provenance</h2><pre>{html.escape(pd.Series(provenance['inputs']).to_string())}</pre>
</body></html>
"""
