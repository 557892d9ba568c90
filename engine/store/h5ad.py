"""AnnData ``.h5ad`` files, read with h5py in gene blocks (the anndata package is not needed).

Follows the AnnData on-disk format (anndata >= 0.7, "encoding-type" attributes): ``obs`` (one row
per observation = sample) and ``var`` (one row per variable = gene) are dataframes whose index
gives the sample and gene IDs and whose columns become sample and gene annotations (numbers,
booleans as text ``True``/``False``, strings, categoricals as their labels, nullable integers,
booleans and strings with their missing values); ``X`` (or ``layers/<name>`` with ``--layer``) is
obs x var, so it is transposed to genes x samples. Each block of genes reads:

- dense ``X``: the column slice ``X[:, genes]`` (one block in memory);
- CSC (compressed by gene): the block's stretch of ``data``/``indices`` (at most one block);
- CSR (compressed by sample): every sample's entries, in pieces of at most ``SPARSE_PIECE``
  stored values, keeping those in the block: memory is one block plus one piece, and the sparse
  arrays are read once per gene block (re-save as CSC, ``adata.X = adata.X.tocsc()``, to read
  them once).

Other parts of the file (obsm, varm, uns, raw) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.store.formats import Block, MatrixSource

SPARSE_PIECE = 2**23  # stored values per piece of a CSR matrix read (~100 MB with the indices)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _encoding(node) -> str:
    return _text(node.attrs.get("encoding-type", ""))


def _strings(dataset) -> np.ndarray:
    import h5py

    if h5py.check_string_dtype(dataset.dtype) is not None:
        return dataset.asstr()[...].astype(object)
    if dataset.dtype.kind == "S":
        return np.array([_text(v) for v in dataset[...]], dtype=object)
    return dataset[...].astype(str).astype(object)


def _column(node, where: str):
    """One dataframe column as a numpy array or ``pd.Categorical`` (NaN/None = missing)."""
    import h5py

    encoding = _encoding(node)
    if isinstance(node, h5py.Dataset):
        if encoding == "string-array" or h5py.check_string_dtype(node.dtype) is not None \
                or node.dtype.kind in "SO":
            return _strings(node)
        if node.dtype.kind in "biuf":
            return node[...]
    elif encoding == "categorical":
        codes = node["codes"][...].astype(np.int64)
        categories = _column(node["categories"], where)
        return pd.Categorical.from_codes(codes, categories=pd.Index(categories),
                                         ordered=bool(node.attrs.get("ordered", False)))
    elif encoding in ("nullable-integer", "nullable-boolean", "nullable-string-array"):
        mask = node["mask"][...].astype(bool)
        values = _column(node["values"], where)
        if encoding == "nullable-integer":
            out = values.astype(np.float64)
            out[mask] = np.nan
        else:
            out = values.astype(str if encoding == "nullable-boolean" else object).astype(object)
            out[mask] = None
        return out
    raise InputError(f"{where} has encoding {encoding or type(node).__name__!r}, which cohort "
                     "ingest does not read (convert it to a string or numeric column)")


def read_dataframe(group, what: str, path: Path) -> pd.DataFrame:
    """obs or var as a DataFrame indexed by its (string) index."""
    import h5py

    if isinstance(group, h5py.Dataset) or _encoding(group) != "dataframe":
        raise InputError(f"{path}: {what} is not an AnnData dataframe (files written by anndata "
                         "< 0.7 store it differently: re-save the file with a recent anndata)")
    index_name = _text(group.attrs["_index"])
    order = [_text(c) for c in np.atleast_1d(group.attrs.get("column-order", []))]
    index = pd.Index(_strings(group[index_name]), dtype=object)
    columns = {}
    for name in order:
        columns[name] = _column(group[name], f"{path}: {what} column {name!r}")
    return pd.DataFrame(columns, index=index)


class H5adReader(MatrixSource):
    kind = "h5ad"

    def __init__(self, path: str | Path, *, layer: str | None = None):
        import h5py

        super().__init__(path)
        if not self.path.exists():
            raise InputError(f"matrix {self.path} does not exist")
        self.layer = layer
        try:
            file = h5py.File(self.path, "r")
        except OSError as error:
            raise InputError(f"{self.path} is not a readable HDF5 (.h5ad) file: {error}") from None
        with file:
            for part in ("obs", "var"):
                if part not in file:
                    raise InputError(f"{self.path} has no {part}: not an AnnData file")
            obs = read_dataframe(file["obs"], "obs", self.path)
            var = read_dataframe(file["var"], "var", self.path)
            layers = sorted(file["layers"].keys()) if "layers" in file else []
            self.count_hint = (f"; or read a layer of raw counts with --layer "
                               f"(layers: {', '.join(layers)})" if layers and layer is None else "")
            node = self._matrix(file, layers)
            sparse = _encoding(node) in ("csr_matrix", "csc_matrix")
            self._sparse = _encoding(node) if sparse else None
            shape = tuple(int(s) for s in (node.attrs["shape"] if self._sparse else node.shape))
        name = f"layers/{layer}" if layer else "X"
        if shape != (len(obs), len(var)):
            raise InputError(f"{self.path}: {name} is {shape[0]} x {shape[1]} but obs has "
                             f"{len(obs)} rows and var {len(var)} (a damaged file?)")
        if layer is not None:
            self.options["layer"] = layer
        self.sample_ids = list(obs.index)
        self._check_sample_ids("in obs (obs_names)")
        self.sample_annotations = obs
        self.gene_annotations = var
        self._gene_ids = var.index.to_numpy(object)

    def _matrix(self, file, layers: list[str]):
        if self.layer is not None:
            if self.layer not in layers:
                raise InputError(f"{self.path} has no layer {self.layer!r} (layers: "
                                 f"{', '.join(layers) or 'none'})")
            return file["layers"][self.layer]
        if "X" not in file:
            raise InputError(f"{self.path} has no X: choose a layer with --layer "
                             f"(layers: {', '.join(layers) or 'none'})")
        return file["X"]

    def blocks(self, rows: int) -> Iterator[Block]:
        import h5py

        with h5py.File(self.path, "r") as file:
            node = file["layers"][self.layer] if self.layer else file["X"]
            n_genes, n_samples = len(self._gene_ids), len(self.sample_ids)
            if self._sparse == "csr_matrix":
                indptr = node["indptr"][...].astype(np.int64)
                pieces = _pieces(indptr)
            for start in range(0, n_genes, rows):
                stop = min(start + rows, n_genes)
                if self._sparse is None:
                    values = node[:, start:stop].T.astype(np.float64)
                elif self._sparse == "csc_matrix":
                    values = _csc_block(node, start, stop, n_samples)
                else:
                    values = _csr_block(node, indptr, pieces, start, stop)
                yield Block(self._gene_ids[start:stop], np.ascontiguousarray(values), start + 1)

    def locate(self, block: Block, row: int, column: int) -> str:
        return (f"at gene {block.gene_ids[row]!r}, sample {self.sample_ids[column]!r} of "
                + (f"layer {self.layer!r}" if self.layer else "X"))


def _csc_block(node, start: int, stop: int, n_samples: int) -> np.ndarray:
    """Genes ``start:stop`` of a CSC obs x var matrix as a dense genes x samples block."""
    from scipy import sparse

    ptr = node["indptr"][start:stop + 1].astype(np.int64)
    data = node["data"][ptr[0]:ptr[-1]]
    samples = node["indices"][ptr[0]:ptr[-1]]
    genes = np.repeat(np.arange(stop - start), np.diff(ptr))
    # coo -> dense sums duplicate entries, as scipy does for a non-canonical matrix
    block = sparse.coo_matrix((data, (genes, samples)), shape=(stop - start, n_samples))
    return block.toarray().astype(np.float64)


def _pieces(indptr: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges of a CSR matrix holding at most ``SPARSE_PIECE`` stored values (>= 1 row each)."""
    out, row, n = [], 0, len(indptr) - 1
    while row < n:
        stop = int(np.searchsorted(indptr, indptr[row] + SPARSE_PIECE, side="right")) - 1
        stop = min(max(stop, row + 1), n)
        out.append((row, stop))
        row = stop
    return out


def _csr_block(node, indptr: np.ndarray, pieces, start: int, stop: int) -> np.ndarray:
    """Genes ``start:stop`` of a CSR obs x var matrix, scanning its samples piece by piece."""
    n_samples = len(indptr) - 1
    block = np.zeros((stop - start, n_samples), dtype=np.float64)
    for first, last in pieces:
        lo, hi = int(indptr[first]), int(indptr[last])
        genes = node["indices"][lo:hi].astype(np.int64)
        keep = (genes >= start) & (genes < stop)
        if not keep.any():
            continue
        samples = np.repeat(np.arange(first, last), np.diff(indptr[first:last + 1]))[keep]
        np.add.at(block, (genes[keep] - start, samples), node["data"][lo:hi][keep])
    return block
