"""Seeded random streams that do not depend on chunking, workers or execution order.

Every random draw of a job comes from ``default_rng(SeedSequence(job_seed, spawn_key=(key,
block)))``: ``key`` is a stable integer of the analysis (and of the purpose of the draw, so an
analysis's bootstrap and permutations are independent streams) and ``block`` numbers the
replicate or permutation blocks, never gene chunks or workers. A block is therefore the same
whichever task draws it, so a replicate or permutation is the same for every gene.
"""

from __future__ import annotations

import hashlib

import numpy as np

from engine.errors import InputError

__all__ = ["analysis_key", "block_rng", "check_seed"]


def analysis_key(name: str, purpose: str = "") -> int:
    """A stable integer of an analysis name (and ``purpose``, e.g. ``"bootstrap"``): the first
    spawn-key entry of its random streams. GSEA's streams use the name alone."""
    text = name if not purpose else f"{name}\x1f{purpose}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _non_negative(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_seed(seed, key) -> tuple[int, int]:
    """``seed`` and ``key`` as ints; one ``InputError`` naming the bad one. Call it while a
    graph is built, so a bad seed is refused then and not inside a task."""
    return _non_negative("seed", seed), _non_negative("key", key)


def block_rng(seed: int, key: int, block: int) -> np.random.Generator:
    """The generator of block ``block`` of the stream ``key`` under the job seed ``seed``."""
    seed, key, block = (_non_negative(n, v) for n, v in
                        (("seed", seed), ("key", key), ("block", block)))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, block)))
