"""One module per benchmark section, discovered by bench/run.py from the file names here.

Each exposes `cases(quick: bool, backends: tuple, smoke: bool = False) -> list[Case]`
(bench/common.py): `quick` for sizes that run in seconds, `smoke` (optional keyword) for tiny sizes
that only prove the section works (tests/test_bench.py runs every section that accepts it).
A case declares what judges it: `bytes_moved` / `flops` (and `matmul_shape` for contractions) for
the fraction of the machine's limits, `targets` / `peer_targets` for the speed-ups it must reach,
`note` for why it may not.

End-to-end training steps are one more section, `training_step.py`: one case per model variant
and size with `mode="train step"`, `items=<batch size>` (rows then report samples/s), a
"reference" variant running the step with `gmkernels.use_backend("reference")` as the baseline
and one variant per gmkernels backend.
"""
