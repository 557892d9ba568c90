"""Gene-set libraries: GMT/GMX files and the libraries bundled with the engine.

A gene set is a name, its members (gene IDs or symbols, order kept, duplicates removed), a
description, and where it came from (``source``, ``version``). Formats (as the Broad's GSEA
documentation defines them):

- GMT: one set per line, TAB-separated: name, description, members. Lines have different
  lengths; CRLF line endings and blank lines are tolerated, empty member fields are ignored.
- GMX: one set per *column*: row 1 the names, row 2 the descriptions, then the members;
  columns have different lengths (empty cells are ignored).

Bundled libraries (``bundled_libraries()``; data and licences in ``data/README.md``): ``icr``
(the Immunologic Constant of Rejection and its 4 categories), ``seed_signatures`` (the other
gene lists spelled out in the seed studies) and ``hallmark`` (MSigDB Hallmark v7.0, CC BY 4.0).
"""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from engine.errors import InputError, preview
from engine.fsutil import write_text_atomic

DATA_DIR = Path(str(resources.files("engine.genesets") / "data"))
FILE_SUFFIXES = (".gmt", ".gmx", ".gmt.gz", ".gmx.gz")


@dataclass(frozen=True)
class GeneSet:
    """One gene set. ``genes`` keeps the order given, without duplicates or empty names."""

    name: str
    genes: tuple[str, ...]
    description: str = ""
    source: str = ""
    version: str = ""

    def __post_init__(self):
        name = str(self.name).strip()
        if not name:
            raise InputError("a gene set has an empty name (give every set a name)")
        object.__setattr__(self, "name", name)
        if isinstance(self.genes, str):
            raise InputError(f"gene set {name!r}: genes must be a sequence of names, not one "
                             f"string ({self.genes[:40]!r})")
        members = (str(g).strip() for g in self.genes)
        object.__setattr__(self, "genes", tuple(dict.fromkeys(g for g in members if g)))
        for field in ("description", "source", "version"):
            object.__setattr__(self, field, "" if getattr(self, field) is None
                               else str(getattr(self, field)))

    def __len__(self) -> int:
        return len(self.genes)

    def __repr__(self) -> str:
        head = ", ".join(self.genes[:5]) + (", ..." if len(self.genes) > 5 else "")
        return (f"GeneSet({self.name!r}, {len(self.genes)} genes: {head}; "
                f"source={self.source!r}, version={self.version!r})")


# ---------------------------------------------------------------------------------------------
# GMT / GMX

def _read_lines(path: Path) -> list[str]:
    """The file's lines without line endings (LF or CRLF); ``.gz`` files are decompressed."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") \
            else path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"gene-set file {path} does not exist") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read gene-set file {path}: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}, line {line}: not UTF-8 text (save the file as UTF-8)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_gmt(path: str | Path, *, source: str | None = None,
             version: str | None = None) -> list[GeneSet]:
    """The gene sets of a GMT file, in file order.

    ``source`` defaults to the file's name, ``version`` to ``""``. Blank lines are skipped;
    a line needs at least a name and a TAB; a set name used twice is refused (the error names
    both lines). Member fields are stripped of surrounding spaces; empty ones are ignored and a
    member listed twice is kept once.
    """
    path = Path(path)
    source = path.name if source is None else source
    version = "" if version is None else version
    sets: list[GeneSet] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise InputError(f"{path}, line {number}: no TAB; a GMT line is "
                             "name<TAB>description<TAB>gene<TAB>gene...")
        name = fields[0].strip()
        if not name:
            raise InputError(f"{path}, line {number}: the set name (first field) is empty")
        if name in first_line:
            raise InputError(f"{path}, line {number}: gene set {name!r} is already defined on "
                             f"line {first_line[name]} (set names must be unique)")
        first_line[name] = number
        sets.append(GeneSet(name, tuple(fields[2:]), fields[1].strip(), source, version))
    return sets


def write_gmt(sets: Iterable[GeneSet], path: str | Path) -> Path:
    """Write ``sets`` as GMT (LF line endings, UTF-8), atomically: a temporary file in the same
    folder is renamed to ``path`` when complete. ``read_gmt`` of a GMT file without duplicate
    or empty members, with LF endings and a final newline, written back gives the same bytes."""
    path = Path(path)
    lines, seen = [], set()
    for s in sets:
        fields = (s.name, s.description, *s.genes)
        bad = [f for f in fields if "\t" in f or "\n" in f or "\r" in f]
        if bad:
            raise InputError(f"gene set {s.name!r}: {bad[0][:40]!r} contains a TAB or line break, "
                             "which GMT cannot hold")
        if s.name in seen:
            raise InputError(f"gene set {s.name!r} appears twice (set names must be unique)")
        seen.add(s.name)
        lines.append("\t".join(fields) + "\n")
    write_text_atomic(path, "".join(lines))
    return path


def read_gmx(path: str | Path, *, source: str | None = None,
             version: str | None = None) -> list[GeneSet]:
    """The gene sets of a GMX file (one set per column: row 1 names, row 2 descriptions, then
    members), in column order. Columns may end at different rows; empty cells are ignored;
    a column whose name is empty must be empty. Duplicate set names are refused."""
    path = Path(path)
    source = path.name if source is None else source
    version = "" if version is None else version
    rows = [line.split("\t") for line in _read_lines(path)]
    if not rows or not any(f.strip() for f in rows[0]):
        raise InputError(f"{path}: no set names in the first row (a GMX file has one set per "
                         "column: names in row 1, descriptions in row 2, then members)")
    names = [f.strip() for f in rows[0]]
    width = max(len(r) for r in rows)
    columns = [[r[j].strip() if j < len(r) else "" for r in rows] for j in range(width)]
    sets: list[GeneSet] = []
    first_column: dict[str, int] = {}
    for j, column in enumerate(columns):
        name = names[j] if j < len(names) else ""
        if not name:
            filled = [i + 1 for i, v in enumerate(column) if v]
            if filled:
                raise InputError(f"{path}, column {j + 1}: members (row {filled[0]}) but no set "
                                 "name in row 1")
            continue
        if name in first_column:
            raise InputError(f"{path}, column {j + 1}: gene set {name!r} is already defined in "
                             f"column {first_column[name]} (set names must be unique)")
        first_column[name] = j + 1
        description = column[1] if len(column) > 1 else ""
        sets.append(GeneSet(name, tuple(column[2:]), description, source, version))
    return sets


# ---------------------------------------------------------------------------------------------
# Bundled libraries

@cache
def _index() -> dict:
    with open(DATA_DIR / "libraries.json", encoding="utf-8") as f:
        return json.load(f)


def bundled_libraries() -> dict[str, dict]:
    """Name -> metadata of every bundled library: ``title``, ``file`` (absolute path),
    ``format``, ``n_sets``, ``source``, ``version``, ``licence``, ``citation``, ``sha256``."""
    out = {}
    for name, meta in _index().items():
        entry = {k: copy.deepcopy(v) for k, v in meta.items() if k != "sets"}
        entry["file"] = str(DATA_DIR / meta["file"])
        out[name] = entry
    return out


def _load_bundled(name: str) -> list[GeneSet]:
    meta = _index()[name]
    path = DATA_DIR / meta["file"]
    reader = read_gmx if meta["format"] == "gmx" else read_gmt
    per_set = meta.get("sets", {})
    out = []
    for s in reader(path, source=meta["source"], version=meta["version"]):
        own = per_set.get(s.name, {})
        out.append(GeneSet(s.name, s.genes, s.description, own.get("source", s.source),
                           own.get("version", s.version)))
    return out


def load_gene_sets(ref: str | Path) -> list[GeneSet]:
    """The gene sets of ``ref``: a ``.gmt``/``.gmx`` file (optionally ``.gz``) or the name of a
    bundled library (``bundled_libraries()``). Bundled sets carry their per-set source and
    version; sets from a file carry the file's name as source."""
    names = sorted(_index())
    if isinstance(ref, str) and ref in _index():
        return _load_bundled(ref)
    path = Path(ref)
    lower = path.name.lower()
    if not lower.endswith(FILE_SUFFIXES):
        raise InputError(f"gene sets {str(ref)!r}: not a bundled library ({', '.join(names)}) "
                         f"nor a file ending in {', '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise InputError(f"gene-set file {path} does not exist (give a .gmt/.gmx file or a "
                         f"bundled library: {', '.join(names)})")
    reader = read_gmx if lower.endswith((".gmx", ".gmx.gz")) else read_gmt
    return reader(path)


def check_unique(sets: Iterable[GeneSet]) -> list[GeneSet]:
    """``sets`` as a list; refuses a set name used twice (names become coordinates)."""
    sets = list(sets)
    seen, dup = set(), []
    for s in sets:
        if s.name in seen:
            dup.append(s.name)
        seen.add(s.name)
    if dup:
        raise InputError(f"gene-set names used more than once: {preview(sorted(set(dup)))} "
                         "(rename them; names must be unique)")
    return sets
