"""Write-then-rename, so a failed run never leaves a half-written store or result directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from engine.errors import InputError


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    On any exception the temporary directory is removed and ``path`` is left as it was.
    With ``overwrite`` an existing ``path`` is replaced after the new one is complete.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists (remove it, choose another path, or use --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_file(path: str | Path, role: str) -> dict:
    path = Path(path)
    return {"role": role, "path": str(path.absolute()), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}
