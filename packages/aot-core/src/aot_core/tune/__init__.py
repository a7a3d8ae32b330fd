"""``aot tune MODEL``: measure the configurations worth trying for a workload and keep the best.

- ``sweep``: the knobs, their values (``--knob``, ``--sweep`` file, defaults) and the trials.
- ``results``: the trial results, appended as they finish, so a sweep resumes.
- ``runner``: one trial, a fresh process (``aot_core.bench.worker`` or an ``aot eval`` job).
- ``report``: the table, parity, break-even, the recommendation and the best spec.
- ``command``: the subcommand's parser and handler.
"""
