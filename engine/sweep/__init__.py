"""Sweeps: grids of analyses over cohorts, contrasts and gene-set libraries, run as one graph."""
