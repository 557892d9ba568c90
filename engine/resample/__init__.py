"""Resampling: seeded random streams, exact weighted sums, bootstrap confidence intervals,
per-gene permutation tests and consensus clustering."""
