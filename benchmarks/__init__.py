"""Benchmarks for dirloss; not part of the installed package, run from the repository root.

* :mod:`benchmarks.data` — the data loaders (tables, STS-B-DIR, synthetic) and shot regions;
* :mod:`benchmarks.dir_bench` — the accuracy benchmark's command line; its stages are
  :mod:`~benchmarks.datasets`, :mod:`~benchmarks.methods`, :mod:`~benchmarks.models`,
  :mod:`~benchmarks.training`, :mod:`~benchmarks.selection`, :mod:`~benchmarks.evaluation`,
  :mod:`~benchmarks.results`, :mod:`~benchmarks.scheduler`, :mod:`~benchmarks.targets` and
  :mod:`~benchmarks.reporting`;
  :mod:`benchmarks.recipe_search` is the validation-only search behind the defaults;
* :mod:`benchmarks.finetune_bench` — the fine-tuning benchmark (stages in
  :mod:`benchmarks.finetune`);
* :mod:`benchmarks.bench_ops` — speed and memory of the ops (stages in :mod:`benchmarks.ops`;
  the research-code baselines in :mod:`benchmarks.reference_ops`, the plot in
  :mod:`benchmarks.plot_ops`).
"""
