"""Exact weighted sums of float data: the same bits whatever order BLAS adds in.

Resampling statistics are matrix products: group sums for every label permutation are
``X @ L``, replicate sums for every bootstrap weight vector are ``X @ W``. A float product's
bits depend on the order of the additions, which BLAS chooses by the shape of the block, the
thread count and the CPU; a gene's statistic would then depend on how genes are chunked. Here
each row is first put on an integer grid (shifted by its mean rounded to the grid and scaled by
a power of two, both exact), so every partial sum is an integer below 2^53 and the product is
exact in float64 in any order.

Grid: with weights that sum to at most ``total`` per column (n for 0/1 labels and
multinomial counts), h = floor((53 - ceil(log2 total)) / 2). Rows become integers of at most
2h bits: a grid step of at most 2^(1-2h) of the row's largest deviation from its mean (2^-43
for 200 samples, far below float32 resolution). Sums of squares are exact as three products of
the h-bit halves (hi, lo) of each integer: x^2 = hi^2 2^2h + 2 hi lo 2^h + lo^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Grid", "half_bits", "on_grid", "grid_powers", "exact_sums"]


def half_bits(total_weight) -> int:
    """h such that sums of integers of 2h bits, and of products of h-bit halves, weighted by
    non-negative integer weights summing to at most ``total_weight``, stay below 2^53."""
    total = max(2, int(math.ceil(float(total_weight))))
    return (53 - math.ceil(math.log2(total))) // 2


@dataclass(frozen=True)
class Grid:
    """Rows as integers: x ~= (xq + offset) * step, row by row (``offset``, ``step``: (rows,))."""

    xq: np.ndarray
    offset: np.ndarray
    step: np.ndarray
    h: int


def on_grid(x: np.ndarray, h: int) -> Grid:
    """Each row of the finite float block ``x`` as integers on its grid, |xq| <= 2^(2h-1) + 1.

    ``step`` is a power of two (scaling by it is exact) fine enough that the row's mean is
    representable; values that are multiples of ``step`` (all float32 values within 2^23 steps
    of the largest) are represented exactly, so a group of zeros has a mean of exactly 0.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=1)  # rows are contiguous: the same additions whatever the chunk
    spread = np.abs(x - mean[:, None]).max(axis=1) if x.shape[1] else np.zeros(x.shape[0])
    e_spread = np.frexp(spread)[1]  # spread < 2**e_spread
    e_mean = np.frexp(mean)[1]
    # no finer than the mean's own last bit (keeps the offset an exact integer); a zero mean
    # is on every grid
    exponent = np.where(mean == 0, e_spread + 1 - 2 * h,
                        np.maximum(e_spread + 1 - 2 * h, e_mean - 53))
    exponent = np.where(spread == 0, np.where(mean == 0, 0, e_mean - 53), exponent)
    step = np.ldexp(1.0, exponent)
    offset = np.round(mean / step)
    xq = np.round(x / step[:, None]) - offset[:, None]
    return Grid(xq, offset, step, h)


def grid_powers(grid: Grid, squares: bool = True) -> np.ndarray:
    """The rows to multiply by the weights: (1, rows, n) with ``xq`` alone, or (4, rows, n) with
    ``xq`` and the three products of halves (hi^2, hi lo, lo^2) of its squares."""
    xq, h = grid.xq, grid.h
    if not squares:
        return xq[None]
    hi = np.round(xq * 2.0**-h)
    lo = xq - hi * 2.0**h
    out = np.empty((4, *xq.shape))
    out[0] = xq
    np.multiply(hi, hi, out=out[1])
    np.multiply(hi, lo, out=out[2])
    np.multiply(lo, lo, out=out[3])
    return out


def exact_sums(powers: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Exact ``powers @ weights`` for integer weights (samples x columns): one GEMM for all
    powers. Returns (len(powers), rows, columns); every entry is an exact integer sum."""
    k, rows, n = powers.shape
    out = powers.reshape(k * rows, n) @ np.asarray(weights, dtype=np.float64)
    return out.reshape(k, rows, -1)


def sum_of_squares(parts: np.ndarray, h: int) -> np.ndarray:
    """The raw sum of squares (in grid units squared) from the three exact sums of halves."""
    hh, hl, ll = parts
    raw = hh * 2.0 ** (2 * h)
    raw += hl * 2.0 ** (h + 1)
    raw += ll
    return raw
