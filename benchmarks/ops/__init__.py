"""The speed and memory benchmark of the dirloss ops (its command line is
:mod:`benchmarks.bench_ops`), in stages:

* :mod:`.cases` — :class:`~.cases.Case`, one measured configuration, and the step (forward +
  backward, or one optimiser step) it times;
* :mod:`.field_cases` — the newer losses' cases (issue 17: LDS, FDS, BMC/BNI/GAI, RankSim,
  ConR), each with its official code's way and, for an N x N core, the floor;
* :mod:`.measure` — timing in alternation (:class:`~.measure.Timing`) and peak memory in a
  fresh process;
* :mod:`.runner` — which cases a run holds, which loop sizes are skipped, and the run itself
  (:class:`~.runner.Row`, one measured case);
* :mod:`.reporting` — the markdown tables and the targets of issues 12 and 17, from the rows
  as written to the JSON file.
"""
