"""Preprocessing steps: transforms, count normalisation, NanoString, QC and sample designs.

Kernels are numpy functions on blocks; the public functions take and return lazy xarray objects.
``engine.preprocess.pipeline`` runs the `preprocess:` steps of a job in order.
"""
