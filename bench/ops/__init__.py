"""One module per benchmark section, discovered by bench/run.py from the file names here.

Each exposes `cases(kind: str, backends: tuple) -> list[Case]` (bench/common.py), where `kind` is
"full" (the sizes the targets are about), "quick" (sizes that run in seconds) or "smoke" (tiny
sizes that only prove the section works; tests/test_bench.py runs every section so), and
`backends` the gmkernels backends usable here. A case declares what judges it: `bytes_moved` /
`flops` (and `matmul_shape` for contractions) for the fraction of the machine's limits,
`targets` / `peer_targets` for the speed-ups it must reach, `note` for why it may not.

The size sweep (`run.py --sweep`): a section may expose `sweep_cases(kind, backends)` too, one
case per grid point and mode, each naming in `peers` the contenders that are what a user writes
(the ratio's denominator is the fastest of them), in `skipped` the peers left out at that size
(with why: their memory), `exps` / `work` for the exp roof and the plot's axis, and a `build`
that makes the inputs only when the case runs.

End-to-end training steps are one more section, `training_step.py`: one case per GAN variant and
size with `mode="train step"`, `items=<samples per step>` (rows then report samples/s), a
"reference eager" contender running the step with `gmkernels.use_backend("reference")` as the
baseline and one contender per gmkernels backend. `second_order.py` times the gradient-penalty
pattern (forward, gradient with create_graph, backward of its squared norm) of every op.
"""
