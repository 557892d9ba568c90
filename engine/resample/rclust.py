"""R's clustering algorithms, transcribed so that results match R's bit for bit: ``hclust``
(Murtagh's nearest-neighbour-list algorithm of R's ``hclust.f``, with its choice between equal
dissimilarities), ``cutree``'s cluster numbering (by first observation), and ``kmeans``'s
Hartigan-Wong algorithm (AS 136 as in R's ``kmns.f``), vectorised over many runs at once.
Used by :mod:`engine.resample.consensus` (ConsensusClusterPlus semantics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from engine.errors import InputError

__all__ = ["HCLUST_METHODS", "KMEANS_MAX_ITER", "cutree", "hartigan_wong", "hclust",
           "kmeans_starts"]

#: R ``hclust`` methods transcribed here.
HCLUST_METHODS = ("average", "complete", "single", "mcquitty", "ward.D2", "ward.D")
#: R kmeans's iter.max as ConsensusClusterPlus calls it.
KMEANS_MAX_ITER = 10

def squared_distance(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Sum over the first axis (genes) of (a - c)^2, added gene by gene as ``kmns.f`` does
    (numpy reduces a leading axis row by row, in order)."""
    diff = a - c
    return (diff * diff).sum(axis=0)


def kmeans_starts(data: np.ndarray, start_keys: np.ndarray, k: int) -> np.ndarray:
    """R ``kmeans(x, k)``'s start (``nstart = 1``): k random rows, ``x[sample.int(m, k), ]``
    here the rows with the k smallest keys; when two of them are equal, k random distinct rows
    (R: ``unique(x)[sample.int(nrow(unique(x)), k), ]``), the distinct rows with the k smallest
    keys. (runs, k) row positions."""
    starts = np.argsort(start_keys, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(data, starts[:, :, None], axis=1)
    same = (rows[:, :, None, :] == rows[:, None, :, :]).all(axis=3)
    for r in np.flatnonzero(same.sum(axis=(1, 2)) > k):
        _, first = np.unique(data[r], axis=0, return_index=True)
        if first.size < k:
            raise InputError(f"k-means: a resample has {first.size} distinct samples, fewer "
                             f"than k = {k} (R kmeans: 'more cluster centers than distinct data "
                             "points'); lower k_max or raise p_item")
        starts[r] = first[np.argsort(start_keys[r, first], kind="stable")[:k]]
    return starts


def hartigan_wong(data: np.ndarray, starts: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """R ``kmeans(x, centers = x[starts, ], iter.max = 10, algorithm = "Hartigan-Wong")`` (AS 136,
    R's ``kmns.f``) for many independent runs at once: ``data`` (runs, m, genes), ``starts``
    (runs, K) start rows (run r uses its first ``ks[r]``). Returns (runs, m) clusters 0..k-1.

    Every run steps through the points in lock step; masks keep each run to its own path
    (transfers, live sets, early returns), with kmns.f's arithmetic in its order, so each
    run's partition is R's from the same start. As in R, a run stops after 10 iterations
    (R warns "did not converge") or 50 m quick-transfer steps (R warns), keeping its clusters.
    """
    runs, m, genes = data.shape
    width = starts.shape[1]
    big = float(np.float32(1e30))  # kmns.f: DATA BIG /1.0E30/ (a REAL constant)
    cols = np.arange(width)
    valid = cols[None, :] < ks[:, None]
    index = np.arange(runs)
    by_gene = np.ascontiguousarray(data.transpose(2, 0, 1))  # (genes, runs, m)
    centres = by_gene[:, index[:, None], starts]  # (genes, runs, K)
    # each point's two closest centres (ties: the lower-numbered)
    dist = np.stack([squared_distance(by_gene, centres[:, :, col, None])
                     for col in range(width)], axis=2)
    swap = dist[..., 0] > dist[..., 1]
    ic1 = np.where(swap, 1, 0)
    ic2 = np.where(swap, 0, 1)
    dt1 = np.where(swap, dist[..., 1], dist[..., 0])
    dt2 = np.where(swap, dist[..., 0], dist[..., 1])
    for col in range(2, width):
        db = dist[..., col]
        use = valid[:, col][:, None] & (db < dt2)
        nearest = use & (db < dt1)
        second = use & ~nearest
        dt2 = np.where(second, db, np.where(nearest, dt1, dt2))
        ic2 = np.where(second, col, np.where(nearest, ic1, ic2))
        dt1 = np.where(nearest, db, dt1)
        ic1 = np.where(nearest, col, ic1)
    sums = np.zeros((runs, width, genes))  # added point by point, in order, as kmns.f
    np.add.at(sums, (np.repeat(index, m), ic1.ravel()), data.reshape(runs * m, -1))
    nc = np.zeros((runs, width), dtype=np.int64)
    np.add.at(nc, (np.repeat(index, m), ic1.ravel()), 1)
    if (valid & (nc == 0)).any():  # distinct starts are their own nearest centres
        raise InputError("k-means: empty cluster from the start (R: 'empty cluster: try a "
                         "better set of initial centers')")
    size = nc.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        centres = np.ascontiguousarray(
            np.where(valid[:, :, None], sums / size[:, :, None], 0.0).transpose(2, 0, 1))
        an2 = size / (size + 1.0)
        an1 = np.where(size > 1.0, size / (size - 1.0), big)
    itran = np.ones((runs, width), dtype=bool)
    ncp = np.full((runs, width), -1, dtype=np.int64)
    live = np.zeros((runs, width), dtype=np.int64)
    d = np.zeros((runs, m))
    indx = np.zeros(runs, dtype=np.int64)

    def transfer(ids, i, l1, l2):
        """Move point i of runs ``ids`` from cluster l1 to l2 (kmns.f's update, in order)."""
        al1 = nc[ids, l1].astype(np.float64)
        alw = al1 - 1.0
        al2 = nc[ids, l2].astype(np.float64)
        alt = al2 + 1.0
        point = by_gene[:, ids, i]
        centres[:, ids, l1] = (centres[:, ids, l1] * al1 - point) / alw
        centres[:, ids, l2] = (centres[:, ids, l2] * al2 + point) / alt
        nc[ids, l1] -= 1
        nc[ids, l2] += 1
        an2[ids, l1] = alw / al1
        with np.errstate(divide="ignore"):
            an1[ids, l1] = np.where(alw > 1.0, alw / (alw - 1.0), big)
        an1[ids, l2] = alt / al2
        an2[ids, l2] = alt / (alt + 1.0)
        ic1[ids, i] = l2
        ic2[ids, i] = l1

    running = np.ones(runs, dtype=bool)
    for _ in range(KMEANS_MAX_ITER):
        # ---- optimal-transfer stage (OPTRA)
        act = running.copy()
        live[act[:, None] & itran] = m + 1
        for i in range(m):
            ids = np.flatnonzero(act)
            if ids.size == 0:
                break
            point = i + 1  # kmns.f's 1-based step numbers
            indx[ids] += 1
            l1, l2 = ic1[ids, i], ic2[ids, i]
            ll = l2.copy()
            ok = nc[ids, l1] != 1
            dists = squared_distance(by_gene[:, ids, i, None], centres[:, ids])  # (ids, K)
            rows = np.arange(ids.size)
            redo = ok & (ncp[ids, l1] != 0)
            d[ids[redo], i] = dists[rows[redo], l1[redo]] * an1[ids[redo], l1[redo]]
            r2 = dists[rows, l2] * an2[ids, l2]
            l1_dead = point >= live[ids, l1]
            with np.errstate(divide="ignore", invalid="ignore"):
                for col in range(width):
                    skip = (l1_dead & (point >= live[ids, col])) | (col == l1) | (col == ll) \
                        | ~valid[ids, col]
                    better = ~skip & (dists[:, col] < r2 / an2[ids, col])
                    r2 = np.where(better, dists[:, col] * an2[ids, col], r2)
                    l2 = np.where(better, col, l2)
            stay = ok & (r2 >= d[ids, i])
            ic2[ids[stay], i] = l2[stay]
            move = ok & ~stay
            if move.any():
                t, t1, t2 = ids[move], l1[move], l2[move]
                indx[t] = 0
                live[t, t1] = m + point
                live[t, t2] = m + point
                ncp[t, t1] = point
                ncp[t, t2] = point
                transfer(t, i, t1, t2)
            act[ids[indx[ids] == m]] = False  # returns; no transfer in the last m steps
        finished = act  # went through all points: leave the stage
        itran[finished] = False
        live[finished] -= m
        running &= indx != m
        if not running.any():
            break
        # ---- quick-transfer stage (QTRAN)
        act = running.copy()
        icoun = np.zeros(runs, dtype=np.int64)
        istep = np.zeros(runs, dtype=np.int64)
        while act.any():
            for i in range(m):
                ids = np.flatnonzero(act)
                if ids.size == 0:
                    break
                icoun[ids] += 1
                istep[ids] += 1
                over = istep[ids] >= 50 * m  # R: isteps.Qtran = 50 m; stops the run
                running[ids[over]] = False
                act[ids[over]] = False
                ids = ids[~over]
                l1, l2 = ic1[ids, i], ic2[ids, i]
                ok = nc[ids, l1] != 1
                step = istep[ids]
                redo = ok & (step <= ncp[ids, l1])
                if redo.any():
                    r = ids[redo]
                    d[r, i] = squared_distance(by_gene[:, r, i], centres[:, r, l1[redo]]) \
                        * an1[r, l1[redo]]
                check = ok & ((step < ncp[ids, l1]) | (step < ncp[ids, l2]))
                if check.any():
                    c, c1, c2 = ids[check], l1[check], l2[check]
                    move = squared_distance(by_gene[:, c, i], centres[:, c, c2]) \
                        < d[c, i] / an2[c, c2]
                    if move.any():
                        t, t1, t2 = c[move], c1[move], c2[move]
                        icoun[t] = 0
                        indx[t] = 0
                        itran[t, t1] = True
                        itran[t, t2] = True
                        ncp[t, t1] = istep[t] + m
                        ncp[t, t2] = istep[t] + m
                        transfer(t, i, t1, t2)
                act[ids[icoun[ids] == m]] = False
        running &= ks != 2  # two clusters: no need to re-enter the optimal-transfer stage
        ncp[running] = 0
    return ic1


def hclust(dist, method: str = "average"):
    """R ``stats::hclust`` (R 4.2, ``hclust.f``): the merges of the agglomeration of the square
    dissimilarity matrix ``dist``, as (first, second, height) arrays of length n - 1; ``first <
    second`` are 0-based sample positions representing the two clusters (a cluster is named by
    its lowest member), heights as R reports them (``ward.D2``: square roots).

    Murtagh's nearest-neighbour-list algorithm step by step, with R's choices between equal
    dissimilarities (first in index order) and the same Lance-Williams arithmetic, so the
    merges, and ``cutree``'s classes, are R's also where dissimilarities tie."""
    if method not in HCLUST_METHODS:
        raise InputError(f"unknown linkage {method!r} (choose one of "
                         f"{', '.join(HCLUST_METHODS)})")
    d = np.array(dist, dtype=np.float64)
    n = d.shape[0]
    if d.ndim != 2 or d.shape[1] != n or n < 2:
        raise InputError(f"hclust needs a square dissimilarity matrix of >= 2 items, got shape "
                         f"{d.shape}")
    if method == "ward.D2":
        d = d * d
    index = np.arange(n)
    active = np.ones(n, dtype=bool)
    size = np.ones(n)
    right = np.where(index[None, :] > index[:, None], d, np.inf)
    nn = np.argmin(right, axis=1)
    disnn = right[index, nn]  # the last item has no neighbour to its right: inf
    first = np.empty(n - 1, dtype=np.int64)
    second = np.empty(n - 1, dtype=np.int64)
    height = np.empty(n - 1)
    for step in range(n - 1):
        candidates = np.where(active, disnn, np.inf)
        im = int(np.argmin(candidates))
        i2, j2 = sorted((im, int(nn[im])))
        first[step], second[step] = i2, j2
        height[step] = math.sqrt(candidates[im]) if method == "ward.D2" else candidates[im]
        active[j2] = False
        ks = np.flatnonzero(active)
        ks = ks[ks != i2]
        d1, d2, d12 = d[i2, ks], d[j2, ks], d[i2, j2]
        si, sj, sk = size[i2], size[j2], size[ks]
        if method in ("ward.D", "ward.D2"):
            new = ((si + sk) * d1 + (sj + sk) * d2 - sk * d12) / (si + sj + sk)
        elif method == "single":
            new = np.minimum(d1, d2)
        elif method == "complete":
            new = np.maximum(d1, d2)
        elif method == "average":
            new = (si * d1 + sj * d2) / (si + sj)
        else:  # mcquitty
            new = (d1 + d2) / 2
        d[i2, ks] = new
        d[ks, i2] = new
        after = ks > i2
        if after.any():
            at = int(np.argmin(new[after]))
            disnn_i2, nn_i2 = new[after][at], ks[after][at]
        else:
            disnn_i2, nn_i2 = np.inf, -1
        before, near = ks[~after], new[~after]
        closer = near < disnn[before]
        disnn[before[closer]] = near[closer]
        nn[before[closer]] = i2
        size[i2] = si + sj
        disnn[i2], nn[i2] = disnn_i2, nn_i2
        redo = np.flatnonzero(active & ((nn == i2) | (nn == j2)))
        redo = redo[redo < n - 1]
        if redo.size:
            rows = np.where(active[None, :] & (index[None, :] > redo[:, None]), d[redo], np.inf)
            at = np.argmin(rows, axis=1)
            best = rows[np.arange(redo.size), at]
            nn[redo] = np.where(np.isfinite(best), at, -1)
            disnn[redo] = best
    return first, second, height


def cutree(first: np.ndarray, second: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """R ``cutree(tree, k)`` for each k of ``ks`` from :func:`hclust`'s merges: (len(ks), n)
    classes 1..k after the first n - k merges, numbered in the order of each class's first
    sample."""
    n = len(first) + 1
    ks = [int(k) for k in ks]
    if any(not 1 <= k <= n for k in ks):
        raise InputError(f"cutree: every k must be between 1 and {n}, got {ks}")
    owner = np.arange(n)
    wanted = set(ks)
    states = {n: owner.copy()} if n in wanted else {}
    for step in range(n - min(ks)):
        owner[owner == second[step]] = first[step]
        if n - step - 1 in wanted:
            states[n - step - 1] = owner.copy()
    out = np.empty((len(ks), n), dtype=np.int64)
    for row, k in enumerate(ks):
        _, inverse = np.unique(states[k], return_inverse=True)
        _, first_seen = np.unique(inverse, return_index=True)
        rank = np.empty(k, dtype=np.int64)
        rank[np.argsort(first_seen)] = np.arange(1, k + 1)
        out[row] = rank[inverse]
    return out
