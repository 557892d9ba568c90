"""NanoString nCounter RCC files: one file per sample (lane), read into a probes x samples cohort.

An RCC file (Reporter Code Count, FileVersion 1.7 and 2.0, as written by the nCounter Digital
Analyzer, SPRINT and nSolver's RCC export) is plain text in tagged sections::

    <Header>             FileVersion,1.7 / SoftwareVersion,... (2.0 adds SystemType)
    <Sample_Attributes>  ID, Owner, Comments, Date (YYYYMMDD), GeneRLF, SystemAPF (2.0: AssayType)
    <Lane_Attributes>    ID (lane 1-12), FovCount, FovCounted, ScannerID, StagePosition,
                         BindingDensity, CartridgeID, CartridgeBarcode
    <Code_Summary>       the line ``CodeClass,Name,Accession,Count``, then one probe per line
    <Messages>           (optional, ignored)

each closed by ``</Section>``. Attribute lines are ``Key,Value``; the value is everything after
the first comma (comments may hold commas), and a line without a comma continues the previous
value, as NanoStringNCTools ``readRccFile`` reads them. Code classes are Endogenous,
Housekeeping, Positive, Negative and others (Binding, Purification, SNV_*, ...); positive
controls are named with their concentration in fM, e.g. ``POS_A(128)``. Field names follow
NanoStringNCTools (``RccMetadata.R``), nanostringr ``read_rcc`` and NanoTube ``read_rcc``.

Every problem is one ``InputError`` naming the file (and line where there is one).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from engine.errors import InputError, preview

__all__ = ["RccCohort", "read_rcc", "read_rcc_folder", "snake_case"]

REQUIRED_SECTIONS = ("Header", "Sample_Attributes", "Lane_Attributes", "Code_Summary")
CODE_SUMMARY_HEADER = ("CodeClass", "Name", "Accession", "Count")
_INT_LANE = ("lane_id", "fov_count", "fov_counted", "stage_position")
_FLOAT_LANE = ("binding_density",)


@dataclass
class RccCohort:
    """A folder of RCC files as one cohort.

    ``counts``: probes x samples, int64; index = probe ID (the Name; when a Name repeats in
    the code set, every copy becomes ``Name_CodeClass``), columns = sample IDs.
    ``samples``: index = sample ID; the header and sample attributes (``file_version``,
    ``software_version``, ``id``, ``owner``, ``comments``, ``date``, ``gene_rlf``,
    ``system_apf``, ...), the lane attributes (``lane_id``, ``fov_count``, ``fov_counted``,
    ``scanner_id``, ``stage_position``, ``binding_density``, ``cartridge_id``, ...) and ``file``.
    Counts and positions are nullable integers, ``binding_density`` float, the rest text.
    ``genes``: index = probe ID; ``code_class``, ``accession``, ``name``.
    """

    counts: pd.DataFrame
    samples: pd.DataFrame
    genes: pd.DataFrame


def snake_case(name: str) -> str:
    """``GeneRLF`` -> ``gene_rlf``, ``FovCounted`` -> ``fov_counted``, ``ID`` -> ``id``."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name.strip())
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def read_rcc(path) -> tuple[dict[str, str], dict[str, str], pd.DataFrame]:
    """One RCC file: (sample attributes, lane attributes, code summary).

    The sample attributes are the ``<Header>`` fields (FileVersion, SoftwareVersion, ...) and
    the ``<Sample_Attributes>`` fields, the lane attributes the ``<Lane_Attributes>`` fields,
    keyed by the names written in the file, values as text (an empty value is ``""``). The code
    summary has columns ``code_class``, ``name``, ``accession``, ``count`` (int64) and ``line``
    (1-based line of the probe in the file), in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"RCC file {path} does not exist")
    return _parse(path.read_bytes(), str(path))


def read_rcc_folder(folder) -> RccCohort:
    """Every ``*.RCC``/``*.rcc`` file in ``folder`` (and in ``.zip`` archives there), or in a
    ``.zip`` given as ``folder``: one sample per file, in file-name order.

    The sample ID is the ``<Sample_Attributes>`` ``ID`` when it is non-empty and unique across
    the files; otherwise every sample is named by its file stem (``01_S1.RCC`` -> ``01_S1``),
    so a folder of re-used IDs (``ID,Sample``) still gives one column per file. The files must
    share one code set: the same (CodeClass, Name, Accession) probes, in any order, and the
    same GeneRLF where both name one.
    """
    folder = Path(folder)
    parsed, file_names = [], []
    for label, stem, name, data in _rcc_files(folder):  # parsed one at a time: bounded memory
        parsed.append((label, stem, _parse(data, label)))
        file_names.append(name)
    if not parsed:
        raise InputError(f"no RCC files (*.RCC, *.rcc) in {folder}")

    ids = [sample.get("ID", "").strip() for _, _, (sample, _, _) in parsed]
    if all(ids) and len(set(ids)) == len(ids):
        sample_ids = ids
    else:
        sample_ids = [stem for _, stem, _ in parsed]
        seen: dict[str, str] = {}
        for (label, _, _), sid in zip(parsed, sample_ids):
            if sid in seen:
                raise InputError(
                    f"duplicate sample IDs: {seen[sid]} and {label} both give sample {sid!r} "
                    "(their Sample_Attributes IDs are not unique, so file stems name the "
                    "samples; rename one file)")
            seen[sid] = label

    _check_rlf(parsed)
    genes, keys = _genes(parsed[0])
    counts = np.empty((len(genes), len(parsed)), dtype=np.int64)
    for j, (label, _, (_, _, summary)) in enumerate(parsed):
        counts[:, j] = _aligned_counts(summary, keys, parsed[0][0], label)

    rows = [_sample_row(sample, lane, name)
            for (_, _, (sample, lane, _)), name in zip(parsed, file_names)]
    samples = pd.DataFrame(rows, index=pd.Index(sample_ids, name="sample"))
    for column in samples.columns:
        samples[column] = _typed(samples[column], column)
    return RccCohort(
        counts=pd.DataFrame(counts, index=genes.index.copy(),
                            columns=pd.Index(sample_ids, name="sample")),
        samples=samples, genes=genes)


def _rcc_files(folder: Path):
    """(label for messages, stem, file name for the table, bytes) of every RCC file, sorted.

    The file name is relative to the folder (``S1.RCC``, ``run.zip:S1.RCC``)."""
    def is_rcc(name: str) -> bool:
        p = PurePosixPath(name)
        return p.suffix.lower() == ".rcc" and not p.name.startswith(".") \
            and "__MACOSX" not in p.parts

    def from_zip(archive: Path):
        try:
            with zipfile.ZipFile(archive) as z:
                for member in sorted(z.namelist()):
                    if is_rcc(member) and not member.endswith("/"):
                        yield (f"{archive}:{member}", PurePosixPath(member).stem,
                               f"{archive.name}:{member}", z.read(member))
        except zipfile.BadZipFile as exc:
            raise InputError(f"{archive} is not a readable zip archive ({exc})") from None

    if folder.is_file() and folder.suffix.lower() == ".zip":
        yield from from_zip(folder)
        return
    if not folder.is_dir():
        raise InputError(f"RCC folder {folder} does not exist (give a folder of .RCC files "
                         "or a .zip of them)")
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_rcc(path.name):
            yield str(path), path.stem, path.name, path.read_bytes()
        elif path.is_file() and path.suffix.lower() == ".zip":
            yield from from_zip(path)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:  # instrument exports are ASCII; Windows-edited ones may be cp1252
        return data.decode("latin-1")


_TAG = re.compile(r"<(/?)([A-Za-z_][A-Za-z0-9_]*)>")


def _parse(data: bytes, label: str) -> tuple[dict[str, str], dict[str, str], pd.DataFrame]:
    lines = _decode(data).splitlines()
    sections: dict[str, tuple[int, list[tuple[int, str]]]] = {}
    current: str | None = None
    opened_at = 0
    body: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        tag = _TAG.fullmatch(line) if line.startswith("<") else None
        if tag and not tag.group(1):
            if current is not None:
                raise InputError(f"RCC file {label}: line {number} opens <{tag.group(2)}> before "
                                 f"<{current}> (line {opened_at}) is closed with </{current}>")
            if tag.group(2) in sections:
                raise InputError(f"RCC file {label}: line {number} repeats section "
                                 f"<{tag.group(2)}> (first at line {sections[tag.group(2)][0]})")
            current, opened_at, body = tag.group(2), number, []
        elif tag:
            if tag.group(2) != current:
                raise InputError(f"RCC file {label}: line {number} closes </{tag.group(2)}> but "
                                 + (f"the open section is <{current}> (line {opened_at})"
                                    if current else "no section is open"))
            sections[current] = (opened_at, body)
            current = None
        elif current is not None:
            if line:
                body.append((number, line))
        elif line:
            raise InputError(f"RCC file {label}: line {number} is outside any section: "
                             f"{line[:60]!r} (is this an RCC file?)")
    if current is not None:
        raise InputError(f"RCC file {label}: section <{current}> opened on line {opened_at} is "
                         f"never closed (no </{current}> line)")
    missing = [s for s in REQUIRED_SECTIONS if s not in sections]
    if missing:
        raise InputError(f"RCC file {label} has no " + ", ".join(f"<{s}>" for s in missing)
                         + " section (an RCC file has <Header>, <Sample_Attributes>, "
                         "<Lane_Attributes> and <Code_Summary>)")

    sample, _ = _attributes(sections["Header"], "Header", label)
    for key, value in _attributes(sections["Sample_Attributes"], "Sample_Attributes",
                                  label)[0].items():
        if key in sample:
            raise InputError(f"RCC file {label}: <Sample_Attributes> field {key!r} repeats a "
                             "<Header> field")
        sample[key] = value
    lane, where = _attributes(sections["Lane_Attributes"], "Lane_Attributes", label)
    for key, value in lane.items():
        kind = _lane_kind(key)
        if kind and value and not re.fullmatch(_NUMBER[kind], value):
            raise InputError(f"RCC file {label}: line {where[key]}: lane attribute {key} is "
                             f"{value!r}, not {'a whole number' if kind == 'int' else 'a number'}")
    return sample, lane, _code_summary(sections["Code_Summary"], label)


_NUMBER = {"int": r"[+-]?\d+", "float": r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"}


def _lane_kind(key: str) -> str | None:
    column = "lane_id" if key == "ID" else snake_case(key)
    return "int" if column in _INT_LANE else "float" if column in _FLOAT_LANE else None


def _attributes(section, name: str, label: str) -> tuple[dict[str, str], dict[str, int]]:
    """``Key,Value`` lines: the values and the line of each key."""
    opened_at, body = section
    out: dict[str, str] = {}
    where: dict[str, int] = {}
    last = None
    for number, line in body:
        if "," not in line:
            if last is None:
                raise InputError(f"RCC file {label}: line {number} of <{name}> should be "
                                 f"Key,Value, got {line!r}")
            out[last] = f"{out[last]} {line}".strip()  # a value that ran onto the next line
            continue
        key, value = (part.strip() for part in line.split(",", 1))
        if not key:
            raise InputError(f"RCC file {label}: line {number} of <{name}> has an empty key")
        if key in out:
            raise InputError(f"RCC file {label}: line {number} repeats <{name}> field {key!r}")
        out[key] = value
        where[key] = number
        last = key
    return out, where


def _code_summary(section, label: str) -> pd.DataFrame:
    opened_at, body = section
    if not body:
        raise InputError(f"RCC file {label}: <Code_Summary> (line {opened_at}) is empty; it "
                         "should start with CodeClass,Name,Accession,Count")
    number, header = body[0]
    if tuple(h.strip() for h in header.split(",")) != CODE_SUMMARY_HEADER:
        raise InputError(f"RCC file {label}: line {number} should be the <Code_Summary> header "
                         f"CodeClass,Name,Accession,Count, got {header!r}")
    rows, line_numbers = [], []
    seen: dict[tuple[str, str], int] = {}
    for number, line in body[1:]:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            raise InputError(f"RCC file {label}: line {number} has {len(fields)} fields, "
                             f"expected 4 (CodeClass,Name,Accession,Count): {line!r}")
        code_class, name, accession, count = fields
        if not code_class or not name:
            raise InputError(f"RCC file {label}: line {number} has an empty CodeClass or Name")
        if not (count.isascii() and count.isdigit()):
            raise InputError(f"RCC file {label}: line {number}: count {count!r} of probe {name!r} "
                             "is not a non-negative integer (RCC counts are whole molecules)")
        if (code_class, name) in seen:
            raise InputError(f"RCC file {label}: probe {name!r} of class {code_class!r} appears "
                             f"more than once (lines {[seen[code_class, name], number]})")
        seen[code_class, name] = number
        rows.append((code_class, name, accession, int(count)))
        line_numbers.append(number)
    if not rows:
        raise InputError(f"RCC file {label}: <Code_Summary> (line {opened_at}) has no probes")
    table = pd.DataFrame(rows, columns=["code_class", "name", "accession", "count"])
    table["count"] = table["count"].astype(np.int64)
    table["line"] = np.asarray(line_numbers, dtype=np.int64)
    return table


def _check_rlf(parsed) -> None:
    rlfs: dict[str, list[str]] = {}
    for label, _, (sample, _, _) in parsed:
        rlf = sample.get("GeneRLF", "").strip()
        if rlf:
            rlfs.setdefault(rlf, []).append(label)
    if len(rlfs) > 1:
        groups = "; ".join(f"GeneRLF {rlf!r}: {preview(files, 3)}" for rlf, files in rlfs.items())
        raise InputError(f"RCC files come from different code sets ({groups}); read each code "
                         "set into its own cohort")


def _genes(first) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """Probe table from the first file; the probe ID is the Name, or Name_CodeClass for a Name
    that repeats (a gene measured by two code classes)."""
    summary = first[2][2]
    names = summary["name"]
    repeated = names.duplicated(keep=False)
    ids = np.where(repeated, names + "_" + summary["code_class"], names)
    clash = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
    if len(clash):
        raise InputError(f"RCC file {first[0]}: probe IDs {preview(list(clash))} clash after "
                         "making repeated Names unique with their CodeClass")
    genes = pd.DataFrame({"code_class": summary["code_class"].to_numpy(object),
                          "accession": summary["accession"].to_numpy(object),
                          "name": names.to_numpy(object)},
                         index=pd.Index(ids.astype(object), name="probe"))
    return genes, _keys(summary)


def _keys(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(zip(summary["code_class"], summary["name"], summary["accession"]))


def _aligned_counts(summary: pd.DataFrame, keys: list[tuple[str, str, str]], first: str,
                    label: str) -> np.ndarray:
    """The file's counts in the order of ``keys`` (the first file's probes)."""
    own = _keys(summary)
    counts = summary["count"].to_numpy(np.int64)
    if own == keys:  # the usual case: every file of a code set lists its probes in one order
        return counts
    position = {key: i for i, key in enumerate(own)}
    if len(own) != len(keys) or any(key not in position for key in keys):
        first_keys = set(keys)
        only_here = [f"{c}/{n}" for c, n, a in own if (c, n, a) not in first_keys]
        only_first = [f"{c}/{n}" for c, n, a in keys if (c, n, a) not in position]
        raise InputError(
            f"RCC files {first} and {label} have different code sets (probes only in {label}: "
            f"{preview(only_here, 5) or 'none'}; only in {first}: "
            f"{preview(only_first, 5) or 'none'}); read each code set into its own cohort")
    return counts[[position[key] for key in keys]]


def _sample_row(sample: dict[str, str], lane: dict[str, str], file: str) -> dict[str, str]:
    row = {snake_case(k): v for k, v in sample.items()}
    for key, value in lane.items():
        column = "lane_id" if key == "ID" else snake_case(key)
        if column in row:
            column = f"lane_{column}"
        row[column] = value
    row["file"] = file
    return row


def _typed(column: pd.Series, name: str) -> pd.Series:
    """Lane counts as nullable integers, binding density as float (both checked while parsing),
    the rest as text ('' where a file lacks the field)."""
    text = column.fillna("").astype(str).str.strip()
    if name not in _INT_LANE + _FLOAT_LANE:
        return text.astype(object)
    values = pd.to_numeric(text.replace("", np.nan))
    return values.astype("Int64") if name in _INT_LANE else values.astype(np.float64)
