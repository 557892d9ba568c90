"""Read-count inputs: featureCounts tables, STAR ``ReadsPerGene.out.tab`` files, NanoString RCC.

All three imply ``--scale counts``. Their conventions (see ``ingest`` for how they are stored):

- featureCounts (Liao et al. 2014, Subread): a ``# Program:featureCounts ...`` comment line, then
  ``Geneid Chr Start End Strand Length`` and one column per BAM file. Chr, Start, End, Strand and
  Length become gene annotations ``chr``, ``start``, ``end``, ``strand``, ``length`` (Start/End of
  multi-exon genes stay ``;``-separated text). A sample column named by a path (``/data/S1.bam``)
  becomes the file name without its directory and without ``.bam`` (or ``.sam``): ``S1``.
- STAR ``--quantMode GeneCounts`` (Dobin et al. 2013): one file per sample; the first four lines
  ``N_unmapped``, ``N_multimapping``, ``N_noFeature``, ``N_ambiguous`` become sample
  annotations; then gene ID and three count columns: 2 = unstranded, 3 = reads on the gene's
  strand (htseq-count ``-s yes``), 4 = reads on the opposite strand (``-s reverse``, e.g. dUTP
  / TruSeq stranded). ``--strand`` picks one and is required. The sample ID is the file name
  before ``ReadsPerGene.out.tab`` (``S1_ReadsPerGene.out.tab`` -> ``S1``, trailing ``_``, ``.``
  or ``-`` dropped) or, for a bare ``ReadsPerGene.out.tab``, its folder's name.
- NanoString RCC: ``engine.store.rcc.read_rcc_folder`` (a folder of ``*.RCC`` files, or a ``.zip``
  of them); probes with ``code_class``,
  ``accession``, ``name`` as gene annotations and the sample and lane attributes as sample
  annotations. An RCC cohort (hundreds of probes) is read into memory at once.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from engine.errors import InputError, preview
from engine.store.formats import COMPRESSIONS, Block, MatrixReader, MatrixSource, open_text

FEATURECOUNTS_COLUMNS = ("Geneid", "Chr", "Start", "End", "Strand", "Length")
STAR_SUFFIX = "ReadsPerGene.out.tab"
STAR_SUMMARY = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
STRANDS = {"unstranded": 1, "forward": 2, "reverse": 3}  # count column after the gene ID


def bam_sample_name(column: str) -> str:
    """featureCounts' column for ``/data/run1/S1.bam`` -> ``S1``; other names are kept."""
    name = column
    if "/" in name or name.lower().endswith((".bam", ".sam")):
        name = PurePosixPath(name).name
        if name.lower().endswith((".bam", ".sam")):
            name = name[:-4]
    return name


class FeatureCountsReader(MatrixReader):
    """featureCounts output, streamed in row blocks like a TSV matrix."""

    kind = "featurecounts"
    scale = "counts"

    def __init__(self, path: str | Path):
        MatrixSource.__init__(self, path)
        if not self.path.exists():
            raise InputError(f"matrix {self.path} does not exist")
        comments = []
        with open_text(self.path) as f:
            line = f.readline()
            while line.startswith("#"):
                comments.append(line.rstrip("\r\n"))
                line = f.readline()
        header = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"), [])
        if tuple(header[:6]) != FEATURECOUNTS_COLUMNS or len(header) < 7:
            raise InputError(f"{self.path} is not a featureCounts table: line {len(comments) + 1} "
                             f"must be {' '.join(FEATURECOUNTS_COLUMNS)} then one column per "
                             "sample, "
                             f"found {' '.join(header[:7])}")
        self._skip = len(comments)
        self._annotations = [(c, c.lower()) for c in FEATURECOUNTS_COLUMNS[1:]]
        self.id_name = header[0]
        self.sample_ids = [bam_sample_name(c) for c in header[6:]]
        if len(set(self.sample_ids)) < len(self.sample_ids):
            renamed = [f"{c} -> {s}" for c, s in zip(header[6:], self.sample_ids)
                       if self.sample_ids.count(s) > 1]
            raise InputError(f"matrix {self.path}: BAM columns give duplicate sample IDs "
                             f"({preview(renamed)}); sample IDs must be unique (rename the BAM "
                             "files, or the columns of the table)")
        if comments:
            self.options["featurecounts_program"] = comments[0].lstrip("# ")


def _without_compression(name: str) -> str:
    for suffix in COMPRESSIONS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_star_file(path: Path) -> bool:
    return _without_compression(Path(path).name).endswith(STAR_SUFFIX)


def star_files(folder: Path) -> list[Path]:
    """STAR count files in ``folder`` or one level down (``S1/ReadsPerGene.out.tab``), sorted."""
    found = [p for p in list(folder.glob("*")) + list(folder.glob("*/*"))
             if p.is_file() and is_star_file(p)]
    return sorted(found)


def rcc_files(folder: Path, *, archives: bool = True) -> list[Path]:
    """The files ``engine.store.rcc.read_rcc_folder`` reads: ``*.RCC`` (not hidden) and ``.zip``
    archives of them in ``folder``, or the ``.zip`` given as ``folder``."""
    if folder.is_file():
        return [folder] if folder.suffix.lower() == ".zip" else []
    suffixes = (".rcc", ".zip") if archives else (".rcc",)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def star_sample_name(path: Path) -> str:
    stem = _without_compression(path.name)[: -len(STAR_SUFFIX)].rstrip("_.-")
    return stem or path.absolute().parent.name


class StarReader(MatrixSource):
    """STAR ``ReadsPerGene.out.tab`` files, one per sample (a folder of them, or a list).

    Memory: each file is read once, one at a time, and its chosen count column is written to a
    scratch file on disk (float64 genes x samples, in the system temporary folder: set TMPDIR to
    move it); row blocks are then read from that file. So memory holds one file plus one block.
    """

    kind = "star"
    scale = "counts"

    def __init__(self, paths: list[str | Path], *, strand: str | None):
        files: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                found = star_files(p)
                if not found:
                    raise InputError(f"folder {p} holds no *{STAR_SUFFIX} files")
                files.extend(found)
            elif not p.exists():
                raise InputError(f"STAR file {p} does not exist")
            else:
                files.append(p)
        super().__init__(Path(paths[0]))
        if strand is None:
            raise InputError(
                "STAR ReadsPerGene files hold three count columns: choose one with --strand "
                "unstranded|forward|reverse (unstranded: column 2; forward: column 3, reads on the "
                "gene's strand, htseq-count -s yes; reverse: column 4, e.g. dUTP / TruSeq stranded "
                "libraries, htseq-count -s reverse)")
        if strand not in STRANDS:
            raise InputError(f"--strand {strand!r} is not one of {', '.join(STRANDS)}")
        self.files = files
        self.source_files = files
        self.options = {"strand": strand}
        self._column = STRANDS[strand]
        self.sample_ids = [star_sample_name(f) for f in files]
        if len(set(self.sample_ids)) < len(self.sample_ids):
            dup = [f"{f} -> {s}" for f, s in zip(files, self.sample_ids)
                   if self.sample_ids.count(s) > 1]
            raise InputError(f"STAR files give duplicate sample IDs: {preview(dup)} (each sample's "
                             f"file must be <sample>_{STAR_SUFFIX} or <sample>/{STAR_SUFFIX})")
        self.sample_annotations = pd.DataFrame(
            [self._summary(f) for f in files], index=pd.Index(self.sample_ids, dtype=object),
            columns=list(STAR_SUMMARY))

    def _summary(self, path: Path) -> list[int]:
        with open_text(path) as f:
            lines = [f.readline().rstrip("\r\n").split("\t") for _ in STAR_SUMMARY]
        values = []
        for number, (cells, name) in enumerate(zip(lines, STAR_SUMMARY), 1):
            if cells[0] != name or len(cells) != 4:
                raise InputError(f"STAR file {path}, line {number}: expected {name} and three "
                                 f"counts, found {' '.join(cells)!r} (is this a {STAR_SUFFIX} "
                                 "file?)")
            try:
                values.append(int(cells[self._column]))
            except ValueError:
                raise InputError(f"STAR file {path}, line {number}: {name} count "
                                 f"{cells[self._column]!r} is not an integer") from None
        return values

    def _read(self, path: Path) -> pd.DataFrame:
        frame = pd.read_csv(path, sep="\t", header=None, skiprows=len(STAR_SUMMARY), dtype={0: str},
                            quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""])
        if frame.shape[1] != 4:
            raise InputError(f"STAR file {path} has {frame.shape[1]} columns after line "
                             f"{len(STAR_SUMMARY)}; expected 4 (gene ID and three counts)")
        return frame

    def blocks(self, rows: int) -> Iterator[Block]:
        first = len(STAR_SUMMARY) + 1  # line of the first gene
        reference = self._read(self.files[0]).iloc[:, 0].astype(str).to_numpy(object)
        n = len(reference)
        with tempfile.TemporaryDirectory(prefix="cohort-star-") as scratch:
            # one row per sample so each file's column is one contiguous write
            counts = np.lib.format.open_memmap(Path(scratch) / "counts.npy", mode="w+",
                                               dtype=np.float64, shape=(len(self.files), n))
            for j, path in enumerate(self.files):
                frame = self._read(path)
                ids = frame.iloc[:, 0].astype(str).to_numpy(object)
                m = min(len(ids), n)
                differ = np.flatnonzero(ids[:m] != reference[:m])
                if len(ids) != n or len(differ):
                    at = int(differ[0]) if len(differ) else m
                    raise InputError(
                        f"STAR files {self.files[0]} and {path} list different genes (first "
                        f"difference on line {first + at}); all files must come from the same "
                        "genome annotation")
                counts[j] = self._count_column(frame.iloc[:, self._column], first, path)
            counts.flush()
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                yield Block(reference[start:stop], np.ascontiguousarray(counts[:, start:stop].T),
                            first + start)
            del counts

    @staticmethod
    def _count_column(column: pd.Series, line: int, path: Path) -> np.ndarray:
        parsed = pd.to_numeric(column, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            r = int(np.argmax(bad))
            raise InputError(f"STAR file {path}: count {column.iloc[r]!r} on line {line + r} is "
                             "not a number")
        return parsed.to_numpy(np.float64)

    def locate(self, block: Block, row: int, column: int) -> str:
        return f"in {self.files[column]} on line {block.first_line + row}"


class RccReader(MatrixSource):
    """A folder of NanoString RCC files (one per sample), read by ``engine.store.rcc``."""

    kind = "rcc"
    scale = "counts"

    def __init__(self, folder: str | Path):
        super().__init__(folder)
        try:
            from engine.store.rcc import read_rcc_folder
        except ImportError:
            raise InputError("reading NanoString RCC files needs engine.store.rcc, which this "
                             "installation lacks") from None
        cohort = read_rcc_folder(self.path)
        self.sample_ids = [str(s) for s in cohort.counts.columns]
        self._check_sample_ids("in its RCC files")
        self.source_files = rcc_files(self.path)
        samples = cohort.samples.copy()
        samples.index = samples.index.astype(str)
        self.sample_annotations = samples.reindex(pd.Index(self.sample_ids, dtype=object))
        self._probes = cohort.counts.index.astype(str).to_numpy(object)
        self.gene_annotations = cohort.genes.set_axis(cohort.genes.index.astype(str)).reindex(
            pd.Index(self._probes, dtype=object))
        self._counts = cohort.counts.to_numpy()

    def blocks(self, rows: int) -> Iterator[Block]:
        for start in range(0, len(self._probes), rows):
            yield Block(self._probes[start:start + rows],
                        self._counts[start:start + rows].astype(np.float64), start + 1)

    def locate(self, block: Block, row: int, column: int) -> str:
        return f"at probe {block.gene_ids[row]!r}, sample {self.sample_ids[column]!r}"
