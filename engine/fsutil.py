"""Write-then-rename, so a failed run never leaves a half-written store or result directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import yaml

from engine.errors import InputError


def temporary_sibling(path: str | Path) -> Path:
    """A new empty directory next to ``path`` (same filesystem, so renaming it is atomic),
    hidden and marked ``.tmp-``; ``remove_stale_temporaries`` finds it if its writer dies."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp


def commit_directory(tmp: Path, path: str | Path) -> None:
    """Rename the complete directory ``tmp`` to ``path``, replacing an existing ``path``
    (moved aside first, so ``path`` is never half old and half new)."""
    path = Path(path).absolute()
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove what writers killed mid-way left in ``folder`` (``.*.tmp-*``, ``.*.old-*``).
    Only for a folder the caller owns exclusively (e.g. under the sweep output lock)."""
    removed = []
    for p in sorted(Path(folder).glob(".*.tmp-*")) + sorted(Path(folder).glob(".*.old-*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    On any exception the temporary directory is removed and ``path`` is left as it was.
    With ``overwrite`` an existing ``path`` is replaced after the new one is complete.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists (remove it, choose another path, or use --overwrite)")
    tmp = temporary_sibling(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_directory(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, ``\n`` line ends) to ``path`` through a temporary sibling and a
    rename: readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_file(path: str | Path, role: str) -> dict:
    path = Path(path)
    return {"role": role, "path": str(path.absolute()), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def read_yaml_mapping(path: Path, what: str, keys: str) -> dict:
    """The YAML mapping in ``path`` (a ``what`` file with keys such as ``keys``)."""
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{what} file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{what} file {path} must be a mapping of keys ({keys})")
    return raw
