"""Benchmarks for dirloss: data loaders, baselines and (later) the accuracy benchmark.

Not part of the installed package; run from the repository root.
"""
