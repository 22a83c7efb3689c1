"""The fine-tuning benchmark's stages (its command line is :mod:`benchmarks.finetune_bench`).

* :mod:`.config` — :class:`~.config.FinetuneConfig`, paths, progress bars;
* :mod:`.data` — STS-B-DIR pairs, the offline encoder, the cache of its frozen lower layers
  and the top encoder that runs on it;
* :mod:`.methods` — one small function per method that builds its head and loss;
* :mod:`.training` — one fine-tuned (method, seed);
* :mod:`.evaluation` — scores on the published STS-B-DIR regions;
* :mod:`.results` — the per-run result record and its file;
* :mod:`.runner` — every (method, seed) not yet done, on a process pool;
* :mod:`.reporting` — ``summary.md`` and the per-bin plot.
"""
