#!/usr/bin/env python3
"""Mutation run: plants plausible bugs one at a time in a scratch copy of the tree, rebuilds,
runs the tests that guard that code, and reports which mutants the tests kill.

    python scripts/mutate.py                      # every mutant, report on stdout
    python scripts/mutate.py --only mbd-self-term --scratch /tmp/gmk-mutate --report out.md

The mutants are a hand-written list of (file, original snippet, mutated snippet): the bugs each
kernel plausibly gets wrong (self term, max subtraction, online rescale, sign of a scattered
gradient, class counts, thread-split reductions) and the training loop's update signs. Each
original snippet must occur exactly once in its file. One scratch copy (default
$TMPDIR/gmkernels-mutate) is reused: `python setup.py build_ext --inplace` there recompiles only
the mutated file (the first build compiles everything). Tests run with the Triton interpreter
off (C++ mutants do not touch Triton, and the Python ones are reached through the C++ ops) and
stop at the first failure (-x): a mutant is killed when the tests fail, survives when they pass.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str          # relative to the repository root
    original: str
    mutated: str
    tests: tuple       # pytest arguments (files, -k filters)
    why: str           # the bug it stands for

    @property
    def compiled(self) -> bool:
        return self.path.startswith("csrc/")


MUTANTS = [
    Mutant("mbd-self-term", "csrc/cpu/minibatch_discrimination.cpp",
           """    } else {
      forward_block<scalar_t, kDim, false>(X, stride, dim, i0, rows, 0, i0, sums);
      forward_block<scalar_t, kDim, false>(X, stride, dim, i0, rows, i0 + rows, n, sums);
    }
    forward_within_block<scalar_t, kDim>(X, stride, dim, i0, rows, sums);""",
           """    } else {
      forward_block<scalar_t, kDim, false>(X, stride, dim, i0, rows, 0, n, sums);
      for (int r = 0; r < rows; ++r) sums[i0 + r] -= scalar_t(1);
      continue;
    }
    forward_within_block<scalar_t, kDim>(X, stride, dim, i0, rows, sums);""",
           ("tests/test_minibatch_discrimination.py",),
           "row-split forward sums over all j, then subtracts the self term exp(0) = 1"),
    Mutant("mbd-scatter-sign", "csrc/cpu/minibatch_discrimination.cpp",
           "          col[cc][l] -= t;", "          col[cc][l] += t;",
           ("tests/test_minibatch_discrimination.py",),
           "symmetric scheme scatters the column gradient with the wrong sign"),
    Mutant("mbd-row-chunk", "csrc/cpu/minibatch_discrimination.cpp",
           """      const int64_t row_end = split.symmetric ? n : std::min(n, row_begin + kRowChunk);
      slice.load(p.M, kernels, b);
      std::fill(sums.begin(), sums.end(), scalar_t(0));""",
           """      const int64_t row_end = split.symmetric ? n : std::min(n - 1, row_begin + kRowChunk - 1);
      slice.load(p.M, kernels, b);
      std::fill(sums.begin(), sums.end(), scalar_t(0));""",
           ("tests/test_minibatch_discrimination.py",),
           "thread split: each row chunk of the forward stops one row short"),
    Mutant("mll-max-subtraction", "csrc/cpu/mixture_log_likelihood.cpp",
           "    if (top[r] == minus_infinity<scalar_t>()) top[r] = 0;", "    top[r] = 0;",
           ("tests/test_mixture_log_likelihood.py",),
           "direct path's logsumexp without subtracting the row maximum"),
    Mutant("mll-online-rescale", "csrc/cpu/mixture_log_likelihood.cpp",
           "    p.running_sum[b] = p.running_sum[b] * exp_vectorizable(old_max - new_max) + sum;",
           "    p.running_sum[b] = p.running_sum[b] + sum;",
           ("tests/test_mixture_log_likelihood.py",),
           "tiled path's online logsumexp keeps the old sum unrescaled when the maximum grows"),
    Mutant("mll-penalty-mean-slope", "csrc/cpu/mixture_log_likelihood.cpp",
           "      s[k] = q * (s[k] - mean_slope);", "      s[k] = q * s[k];",
           ("tests/test_mixture_log_likelihood.py", "tests/test_double_backward.py"),
           "the penalty's double backward forgets to centre the slopes on their row mean"),
    Mutant("mll-penalty-tile-rows", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "    penalty.grad = grad.data_ptr<scalar_t>() + row_begin;",
           "    penalty.grad = grad.data_ptr<scalar_t>();",
           ("tests/test_mixture_log_likelihood.py", "tests/test_double_backward.py"),
           "the penalty's double backward reads every row tile's upstream gradient from the first"),
    Mutant("mll-penalty-sparse-mean-slope", "csrc/cpu/mixture_log_likelihood.cpp",
           "      entry.w = q * (entry.w - mean_slope);", "      entry.w = q * entry.w;",
           ("tests/test_mixture_log_likelihood.py", "-k", "penalty"),
           "the sparse penalty tile forgets to centre the slopes on their row mean"),
    Mutant("mll-penalty-sparse-precision-sums", "csrc/cpu/mixture_log_likelihood.cpp",
           "precision_sums[j] += entry.q * precision[j];", "precision_sums[j] += entry.w * precision[j];",
           ("tests/test_mixture_log_likelihood.py", "-k", "penalty"),
           "the sparse penalty tile's q P row sums take w for q"),
    Mutant("mll-penalty-sparse-column-block", "csrc/cpu/mixture_log_likelihood.cpp",
           "        if (entry.col >= col_end) break;", "        if (entry.col > col_end) break;",
           ("tests/test_mixture_log_likelihood.py", "-k", "penalty"),
           "a column block of the sparse penalty tile also adds the next block's first column"),
    Mutant("mll-penalty-sparse-col-rows", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "        sparse.col_factors = col_factors.data_ptr<scalar_t>() + row_begin * col_factors.size(1);",
           "        sparse.col_factors = col_factors.data_ptr<scalar_t>();",
           ("tests/test_mixture_log_likelihood.py", "-k", "penalty"),
           "every row tile of the sparse penalty form reads the first tile's column factors"),
    Mutant("mll-slope-left-padding", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "        std::fill(row + (diagonal ? 2 * dim : dim + 1), row + width, scalar_t(0));",
           "        (void)width;",
           ("tests/test_mixture_log_likelihood.py", "-k", "penalty"),
           "the penalty's slope operand leaves its padding columns as the scratch held them"),
    Mutant("mll-row-factor-padding", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "    std::fill(row + used, row + width, scalar_t(0));\n  }\n  return factors;",
           "  }\n  return factors;",
           ("tests/test_mixture_log_likelihood.py", "tests/test_double_backward.py"),
           "the row factors leave their padding columns as the scratch held them"),
    Mutant("mll-kept-offset", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "      p.offset = zero_offset.data_ptr<scalar_t>() + col_begin;",
           "      p.offset = problem.offset.data_ptr<scalar_t>() + col_begin;",
           ("tests/test_mixture_log_likelihood.py",),
           "the backward from kept exponents adds the components' offsets a second time"),
    Mutant("mll-kept-row-blocks", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "    visit(row_begin, int64_t(0), kept.narrow(0, row_begin, rows));",
           "    visit(row_begin, int64_t(0), kept.narrow(0, 0, rows));",
           ("tests/test_mixture_log_likelihood.py",),
           "every row block of the backward from kept exponents reads the first block's exponents"),
    Mutant("mll-kept-reused", "gmkernels/ops/mixture_log_likelihood.py",
           "        exponents, ctx.exponents = ctx.exponents, None",
           "        exponents = ctx.exponents",
           ("tests/test_mixture_log_likelihood.py",),
           "a second backward (retain_graph) reads the kept exponents the first overwrote"),
    Mutant("mll-penalty-direct-x-sign", "csrc/cpu/mixture_log_likelihood.cpp",
           "          x_sum[k] -= prec * (w * diff + q * u[k]);",
           "          x_sum[k] -= prec * (w * diff - q * u[k]);",
           ("tests/test_mixture_log_likelihood.py",),
           "the direct penalty kernel's x result takes the U term with the wrong sign"),
    Mutant("mll-penalty-direct-var-norm", "csrc/cpu/mixture_log_likelihood.cpp",
           "prec * prec * (q * u[k] * diff + 0.5 * w * diff * diff) - 0.5 * prec * w;",
           "prec * prec * (q * u[k] * diff + 0.5 * w * diff * diff);",
           ("tests/test_mixture_log_likelihood.py",),
           "the direct penalty kernel's var result drops the normaliser's term"),
    Mutant("kl-class-counts", "csrc/cpu/class_pairwise_kl.cpp",
           "    inverse_count[k] = count[k] ? 1.0 / static_cast<double>(count[k]) : 0.0;",
           "    inverse_count[k] = count[k] > 1 ? 1.0 / static_cast<double>(count[k] - 1) : 0.0;",
           ("tests/test_class_pairwise_kl.py",),
           "class means divide by n_k - 1 (the others of the class) instead of n_k"),
    Mutant("kl-thread-split", "csrc/cpu/class_pairwise_kl.cpp",
           "    for (int slot = 1; slot < slots.count; ++slot) total += partial[slot * table_size + idx];",
           "    for (int slot = 1; slot + 1 < slots.count; ++slot) total += partial[slot * table_size + idx];",
           ("tests/test_class_pairwise_kl.py",),
           "the reduction of the per-thread class tables drops the last thread's table"),
    Mutant("kl-class-groups-first-row", "csrc/cpu/class_pairwise_kl.cpp",
           "    for (int64_t position = first; position < last; ++position) {\n"
           "      const int64_t i = groups.order[position];\n"
           "      const scalar_t* row = p.probs + i * num_categories;\n"
           "      const double grad",
           "    for (int64_t position = first + 1; position < last; ++position) {\n"
           "      const int64_t i = groups.order[position];\n"
           "      const scalar_t* row = p.probs + i * num_categories;\n"
           "      const double grad",
           ("tests/test_class_pairwise_kl.py",),
           "the class-groups backward leaves each class's first row out of W"),
    Mutant("sample-two-normals-swapped", "csrc/cpu/philox_simd.h",
           "  interleave4(r01 * cos01, r01 * sin01, f32v{}, f32v{}, out);",
           "  interleave4(r01 * sin01, r01 * cos01, f32v{}, f32v{}, out);",
           ("tests/test_mixture_sample.py",),
           "the two-normal draw for rows of dim <= 2 gives the pair in the other order (not "
           "randn4_lanes' bits)"),
    Mutant("sample-whole-row-counter", "csrc/cpu/mixture_sample.cpp",
           "      visit(counter, int64_t(0), dim, eps + 4 * (counter - first));",
           "      visit(counter, int64_t(0), dim, eps + 4 * (counter - first) + (dim == 1));",
           ("tests/test_mixture_sample.py",),
           "rows of dim 1 read the second normal of their counter"),
    Mutant("sample-scatter-sign", "csrc/cpu/mixture_sample.cpp",
           "        grad_sigma[j] += sum[width + j];", "        grad_sigma[j] -= sum[width + j];",
           ("tests/test_mixture_sample.py",),
           "diagonal backward scatters the scale gradient with the wrong sign"),
    Mutant("sample-band-tail-dropped", "csrc/cpu/mixture_sample.cpp",
           "    const int64_t group_end = thread + 1 == team ? groups : bands * (thread + 1) / team * kLanes;",
           "    const int64_t group_end = std::min(groups, bands * (thread + 1) / team * kLanes);",
           ("tests/test_mixture_sample.py",),
           "the diagonal backward by columns drops the row's counters past its last whole band "
           "(dim not a multiple of 4 kLanes)"),
    Mutant("sample-band-chunks-merged", "csrc/cpu/mixture_sample.cpp",
           "        }\n        sums.flush();\n      }\n",
           "        }\n      }\n      sums.flush();\n",
           ("tests/test_mixture_sample.py",),
           "the diagonal backward by columns sums all the samples before adding them (not the "
           "chunked schedule's additions: other bits for another thread count)"),
    Mutant("sample-band-grad-columns", "csrc/cpu/mixture_sample.cpp",
           "            add_piece(grad + k, eps,", "            add_piece(grad + (k - k_begin), eps,",
           ("tests/test_mixture_sample.py",),
           "the diagonal backward by columns reads every band's upstream gradient from the row's "
           "first columns"),
    Mutant("sample-recover-ratio-ignored", "csrc/cpu/mixture_sample.cpp",
           "    recoverable &= (size > 0) & (std::abs(mu[j]) <= limit * size);",
           "    recoverable &= (size > 0);",
           ("tests/test_mixture_sample.py",),
           "the backward from the samples recovers eps however large mu is against scale "
           "(z's rounding then swamps scale eps)"),
    Mutant("sample-recover-undivided", "csrc/cpu/mixture_sample.cpp",
           "  for (int64_t k = 0; k < count; ++k) grad_scale[k] /= scale[k];",
           "  (void)grad_scale, (void)scale, (void)count;",
           ("tests/test_mixture_sample.py",),
           "the backward from the samples returns sum grad_z (z - mu) without dividing by scale"),
    Mutant("sample-recover-band-tail-dropped", "csrc/cpu/mixture_sample.cpp",
           "      const int64_t k_end = thread + 1 == team ? dim : bands * (thread + 1) / team * kBandColumns;",
           "      const int64_t k_end = bands * (thread + 1) / team * kBandColumns;",
           ("tests/test_mixture_sample.py",),
           "the backward from the samples by columns drops the columns past the last whole band"),
    Mutant("sample-recover-ranges-overlap", "csrc/cpu/mixture_sample.cpp",
           "    if (c < c_begin || c >= c_end) continue;",
           "    if (c < c_begin || c > c_end) continue;",
           ("tests/test_mixture_sample.py",),
           "the backward from the samples by ranges of components adds the first component of the "
           "next range twice"),
    Mutant("sample-recover-ranges-last-undivided", "csrc/cpu/mixture_sample.cpp",
           "      for (int64_t c = c_begin; c < c_end; ++c)\n        divide_by_scale",
           "      for (int64_t c = c_begin; c + 1 < c_end; ++c)\n        divide_by_scale",
           ("tests/test_mixture_sample.py",),
           "the backward from the samples by ranges of components leaves each range's last "
           "grad_scale row undivided"),
    Mutant("sample-recover-version-unchecked", "gmkernels/ops/mixture_sample.py",
           "        if torch.is_grad_enabled() or (z._version, mu._version) != versions:",
           "        if torch.is_grad_enabled():",
           ("tests/test_mixture_sample.py",),
           "the backward from the samples reads z (or mu) after an in-place change"),
    Mutant("mll-direct-sums-stride", "csrc/cpu/mixture_log_likelihood.cpp",
           "    for (int64_t k = 0; k < dim; ++k) means_t[k * ld + c] = p.means[c * dim + k];",
           "    for (int64_t k = 0; k < dim; ++k) means_t[k * padded + c] = p.means[c * dim + k];",
           ("tests/test_mixture_log_likelihood.py",),
           "the direct backward writes the transposed means with rows padded apart but reads them "
           "ld apart (the stride that keeps the rows out of one cache set)"),
    Mutant("trainer-generator-sign", "python/gmgan/trainer.py",
           "        g_loss.backward()\n", "        (-g_loss).backward()\n",
           ("tests/test_train_learning.py", "-m", "not slow"),
           "the generator's update works against its loss"),
    Mutant("trainer-discriminator-sign", "python/gmgan/trainer.py",
           "            d_loss.backward()\n", "            (-d_loss).backward()\n",
           ("tests/test_train_learning.py", "-m", "not slow"),
           "the discriminator's update works against its loss"),
    Mutant("sample-autograd-sign", "gmkernels/ops/mixture_sample.py",
           "    return grad_mu, grad_scale, None, None", "    return grad_mu, -grad_scale, None, None",
           ("tests/test_mixture_sample.py",),
           "the Python autograd returns the scale gradient with the wrong sign"),
    Mutant("backward-op-no-derivative", "gmkernels/ops/_registry.py",
           "         lambda ctx, *grads: declaration.double_backward(ops, ctx, *grads)),",
           "         lambda ctx, *grads: (None,) * len(ctx.needs_input_grad)),",
           ("tests/test_double_backward.py",),
           "a backward op without a derivative (as recorded by create_graph): a gradient "
           "penalty's second-order terms silently dropped"),
    Mutant("mll-penalty-reruns-backward", "gmkernels/ops/mixture_log_likelihood.py",
           "        grad, x, means, var, log_weights, log_likelihood.detach(), needs[0], any(needs[1:]),",
           "        grad, x, means, var, log_weights, log_likelihood, needs[0], any(needs[1:]),",
           ("tests/test_mixture_log_likelihood.py", "-k", "penalty"),
           "the recorded first gradient keeps an edge to the forward through the log-likelihood: "
           "every penalty's backward runs the first-order backward again, on zeros"),
    Mutant("summary-first-chunk", "csrc/binding/value_summary.cpp",
           "  for (const Partial<T>& part : partials) {",
           "  for (const Partial<T>& part : std::vector<Partial<T>>(partials.begin(), partials.begin() + 1)) {",
           ("tests/test_checks.py",),
           "the value checks read only the first chunk of a large tensor"),
    Mutant("summary-no-nan-probe", "csrc/binding/value_summary.cpp",
           "    if constexpr (std::is_floating_point_v<T>) probe += v - v;",
           "    if constexpr (std::is_floating_point_v<T>) probe += 0;",
           ("tests/test_checks.py",),
           "a NaN passes the value checks (extremes that skip it)"),
    Mutant("value-checks-switch-ignored", "gmkernels/ops/_checks.py",
           "    return not torch.compiler.is_compiling() and _value_checks",
           "    return not torch.compiler.is_compiling()",
           ("tests/test_checks.py",),
           "gmkernels.value_checks(False) still reads every value (a GPU sync per call)"),
    Mutant("index-range-switched-off", "gmkernels/ops/_checks.py",
           "    if not torch.compiler.is_compiling() and value.numel():\n        ends = summary(value)",
           "    if checking_values() and value.numel():\n        ends = summary(value)",
           ("tests/test_checks.py",),
           "value_checks(False) also drops the label and component ranges the Triton kernels index by"),
    Mutant("setup-compiler-libstdcxx", "setup.py",
           '    return ["-fopenmp"] + ([libstdcxx] if libstdcxx else [])',
           '    return ["-fopenmp"]',
           ("tests/test_build.py",),
           "the extension takes libstdc++ the compiler's way, a static copy where that is its default"),
    Mutant("huge-page-advice-dropped", "csrc/binding/output_memory.cpp",
           "    advise_huge_pages(data, static_cast<int64_t>(bytes));",
           "    if (false) advise_huge_pages(data, static_cast<int64_t>(bytes));",
           ("tests/test_bindings.py", "-k", "huge_pages"),
           "GMKERNELS_HUGE_PAGES=1 asks for no huge pages"),
    Mutant("huge-page-switch-ignored", "csrc/binding/output_memory.cpp",
           '  if (setting == nullptr || std::strcmp(setting, "1") != 0) return;',
           '  if (setting != nullptr && std::strcmp(setting, "0") == 0) return;',
           ("tests/test_bindings.py", "-k", "huge_pages"),
           "the huge-page advice is on unless GMKERNELS_HUGE_PAGES=0 (the measured default is off)"),
    Mutant("output-cache-twice-rule-dropped", "csrc/binding/output_memory.cpp",
           "        if (capacity >= bytes && capacity / 2 <= bytes &&",
           "        if (capacity >= bytes &&",
           ("tests/test_output_cache.py",),
           "a small output takes a kept block of any size (pinning a large one)"),
    Mutant("output-cache-largest-taken", "csrc/binding/output_memory.cpp",
           "(best == nullptr || capacity < best->capacity)",
           "(best == nullptr || capacity > best->capacity)",
           ("tests/test_output_cache.py",),
           "an output takes the largest fitting block instead of the smallest"),
    Mutant("output-cache-limit-ignored", "csrc/binding/output_memory.cpp",
           "      while (kept_bytes_ > limit) {",
           "      while (false) {",
           ("tests/test_output_cache.py",),
           "the cache keeps every freed block whatever GMKERNELS_OUTPUT_CACHE_BYTES says"),
    Mutant("output-cache-oldest-kept", "csrc/binding/output_memory.cpp",
           "        kept_.push_front(block);",
           "        kept_.push_back(block);",
           ("tests/test_output_cache.py",),
           "over the limit, the most recently freed block goes back to the system first"),
    Mutant("output-cache-oversize-kept", "csrc/binding/output_memory.cpp",
           "      if (block != nullptr && block->capacity <= limit) {",
           "      if (block != nullptr) {",
           ("tests/test_output_cache.py",),
           "a block over the limit is kept (and evicts the others)"),
    Mutant("output-cache-bad-setting-accepted", "csrc/binding/output_memory.cpp",
           "  if (!digits_only || errno != 0) return false;",
           "  if (value < 0) return false;",
           ("tests/test_output_cache.py",),
           "GMKERNELS_OUTPUT_CACHE_BYTES takes what strtoll makes of any text"),
    Mutant("output-cache-fork-child-locked", "csrc/binding/output_memory.cpp",
           "    pthread_atfork([] { output_cache().lock(); }, [] { output_cache().unlock(); },\n                   [] { output_cache().unlock(); });",
           "    pthread_atfork([] { output_cache().lock(); }, [] { output_cache().unlock(); },\n                   [] {});",
           ("tests/test_output_cache.py",),
           "a forked child's copy of the cache stays locked (its first large output hangs)"),
    Mutant("output-cache-kept-on-refusal", "csrc/binding/output_memory.cpp",
           "      give_back(nullptr, 0);\n      if (posix_memalign",
           "      if (posix_memalign",
           ("tests/test_output_cache.py",),
           "where the system refuses a fresh block, the kept ones are not freed to make room"),
    Mutant("backward-narrowing-kept", "gmkernels/ops/_registry.py",
           "    finally:\n        ctx.needs_input_grad = requiring",
           "    finally:\n        pass",
           ("tests/test_backend.py",),
           "a pass that wants fewer gradients narrows the node for good: a second pass over the kept "
           "graph loses the others"),
    Mutant("backward-captured-leaf-dropped", "gmkernels/ops/_registry.py",
           "        # the results; anything else unexpected keeps the gradient too.\n        return True",
           "        # the results; anything else unexpected keeps the gradient too.\n        return False",
           ("tests/test_backend.py",),
           "autograd.grad(loss, x) with x a leaf gets no gradient for x"),
    Mutant("backward-narrowing-off", "gmkernels/ops/_registry.py",
           "    if sum(requiring) >= 2:",
           "    if False:",
           ("tests/test_mixture_log_likelihood.py", "-k", "alone_skips"),
           "a gradient penalty's first gradient computes the means' gradient too (work the pass drops)"),
    Mutant("summary-reads-wrapped", "gmkernels/ops/_checks.py",
           "            and not torch._C._functorch.is_functorch_wrapped_tensor(data)):",
           "            and True):",
           ("tests/test_checks.py",),
           "the value checks hand a torch.func-wrapped tensor to the compiled pass: the reference "
           "backend no longer works under torch.func"),
    Mutant("mbd-autograd-grad-out", "gmkernels/ops/minibatch_discrimination.py",
           "    return ops.minibatch_discrimination_backward(grad_out, M)",
           "    return ops.minibatch_discrimination_backward(torch.ones_like(grad_out), M)",
           ("tests/test_minibatch_discrimination.py",),
           "the Python autograd ignores the incoming gradient (treats every output as summed)"),
    Mutant("mll-keep-min-dim", "gmkernels/ops/mixture_log_likelihood.py",
           "_KEEP_MIN_DIM = 16",
           "_KEEP_MIN_DIM = 17",
           ("tests/test_mixture_log_likelihood.py", "-k", "keeps_exponents_rules"),
           "the forward keeps its exponents from d = 17 only: d = 16, where the tiled forward "
           "starts and keeping was measured faster, recomputes them in the backward"),
    Mutant("sample-recover-one-chunk-band", "csrc/cpu/mixture_sample.cpp",
           "                     p.mu + c * dim + k_begin, k_end - k_begin, p.grad_mu + c * dim + k_begin,",
           "                     p.mu + c * dim, k_end - k_begin, p.grad_mu + c * dim + k_begin,",
           ("tests/test_mixture_sample.py", "-k", "from_samples"),
           "the one-chunk recovering backward reads each thread's band of mu from column 0"),
    Mutant("mll-centred-copy-tail", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "  for (int64_t l = 0; k + l < n; ++l) {\n    const scalar_t value = a[k + l] - centre[k + l];\n    out[k + l] = value;",
           "  for (int64_t l = 0; k + l < n; ++l) {\n    const scalar_t value = a[k + l] - centre[k + l];",
           ("tests/test_mixture_log_likelihood.py",),
           "the tiled path's centred copy of x and the means leaves the last d mod 8 entries of "
           "each row unwritten (their squared norm still counted)"),
    Mutant("mll-exp-reduction-sign", "csrc/cpu/mixture_log_likelihood.cpp",
           "  r = multiply_add(n, zero + 2.12194440e-4f, r);",
           "  r = multiply_add(n, zero - 2.12194440e-4f, r);",
           ("tests/test_mixture_log_likelihood.py",),
           "the CPU exp's range reduction subtracts the low part of n ln2 with the wrong sign "
           "(exp(x) off by a factor exp(4.2e-4 n))"),
    Mutant("mll-forward-kept-count", "csrc/cpu/mixture_log_likelihood.cpp",
           "      count += __builtin_popcount(keep);\n    }\n    for (; c < end; ++c) {",
           "      count += 16;\n    }\n    for (; c < end; ++c) {",
           ("tests/test_mixture_log_likelihood.py", "-k", "leaving_out"),
           "the forward's compacted sum (AVX-512) counts every lane of a register as kept: the "
           "zeroed lanes add exp(0) each"),
    Mutant("mll-weights-kept-expand", "csrc/cpu/mixture_log_likelihood.cpp",
           "      used += __builtin_popcount(keep);",
           "      used += 16;",
           ("tests/test_mixture_log_likelihood.py", "-k", "leaving_out"),
           "the backward's compacted weights (AVX-512) are expanded back from the wrong place in "
           "the buffer after the first register"),
    Mutant("mll-tiled-nan-row", "csrc/cpu/mixture_log_likelihood.cpp",
           "        p.running_max[b] = std::numeric_limits<scalar_t>::quiet_NaN();",
           "        (void)0;",
           ("tests/test_mixture_log_likelihood.py", "-k", "nan_in_x"),
           "the tiled forward leaves a row of NaN exponents at -inf (the row maximum passes over "
           "NaN)"),
    Mutant("mll-keep-min-work-d32", "gmkernels/ops/mixture_log_likelihood.py",
           "(32, 1 << 22)",
           "(32, 1 << 23)",
           ("tests/test_mixture_log_likelihood.py", "-k", "keeps_exponents_rules"),
           "the forward keeps its exponents from B C d = 2^23 at d = 32 to 255 too, where 2^22 "
           "was measured faster (B = C = 256, d = 64)"),
    Mutant("mll-resp-col-factors-unscaled", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "      if (leaves_responsibilities) col_factors.mul_(grad.unsqueeze(1));",
           "      (void)leaves_responsibilities;",
           ("tests/test_mixture_log_likelihood.py", "-k", "kept_responsibilities"),
           "the first backward that keeps the responsibilities sums the component gradients "
           "without the incoming gradient"),
    Mutant("mll-resp-x-unscaled", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "leaves_responsibilities ? grad.data_ptr<scalar_t>() : nullptr);",
           "leaves_responsibilities ? nullptr : nullptr);",
           ("tests/test_mixture_log_likelihood.py", "-k", "kept_responsibilities"),
           "the first backward that keeps the responsibilities leaves grad_x unscaled by the "
           "incoming gradient"),
    Mutant("mll-resp-table-holds-weights", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "leaves_responsibilities ? scratch.take({x.size(0)}, x.options()).fill_(1) : grad;",
           "leaves_responsibilities ? grad : grad;",
           ("tests/test_mixture_log_likelihood.py", "-k", "kept_responsibilities"),
           "the kept table holds grad r instead of r (and the gradients are scaled twice)"),
    Mutant("mll-resp-reused", "gmkernels/ops/mixture_log_likelihood.py",
           "        table, ctx.responsibilities = ctx.responsibilities, None",
           "        table = ctx.responsibilities",
           ("tests/test_mixture_log_likelihood.py", "-k", "kept_responsibilities"),
           "a second penalty backward (retain_graph) reads the responsibilities the first "
           "overwrote"),
    Mutant("mll-resp-row-blocks", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "    at::Tensor r = kept ? kept_responsibilities.narrow(0, row_begin, n)",
           "    at::Tensor r = kept ? kept_responsibilities.narrow(0, 0, n)",
           ("tests/test_mixture_log_likelihood.py", "-k", "kept_responsibilities"),
           "every row block of the double backward reads the first block's kept "
           "responsibilities"),
    Mutant("mll-tile-row-stride", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "  p.ld = scores.stride(0);",
           "  p.ld = scores.size(1);",
           ("tests/test_mixture_log_likelihood.py",),
           "the tile epilogues step rows by the column count, not by the padded row stride"),
    Mutant("mll-penalty-row-stride", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "    penalty.ld = r.stride(0);   // s has the same stride",
           "    penalty.ld = components;",
           ("tests/test_mixture_log_likelihood.py", "-k", "penalty"),
           "the double backward's epilogue steps rows by the column count, not by the padded "
           "row stride"),
    Mutant("mll-resp-slopes-stride", "csrc/binding/mixture_log_likelihood_tiled.cpp",
           "  const int64_t stride = kept ? std::max(components, kept_responsibilities.stride(0))",
           "  const int64_t stride = kept ? padded_row_stride(components)",
           ("tests/test_mixture_log_likelihood.py", "-k", "keeping_responsibilities_pair"),
           "the double backward's slopes keep their own padded stride while its epilogue steps "
           "them by the kept table's"),
    Mutant("mll-keep-large-min-dim", "gmkernels/ops/mixture_log_likelihood.py",
           "KEEP_LARGE_MIN_DIM = 256",
           "KEEP_LARGE_MIN_DIM = 128",
           ("tests/test_mixture_log_likelihood.py", "-k", "keeps_exponents_rules"),
           "the 64 MiB budget from d = 128, where 40 MB tables were measured 0.8-1.0x"),
]


def tracked_files() -> list:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [name for name in listing.decode().split("\0") if name]


def sync_scratch(scratch: Path) -> None:
    """Copy the tracked tree (and the built extension) into scratch, touching only files whose
    content differs, so that an incremental build there recompiles nothing it need not."""
    names = tracked_files() + [p.name for p in (ROOT / "gmkernels").glob("_C*.so")]
    names = [n if "/" in n or not n.startswith("_C") else f"gmkernels/{n}" for n in names]
    for name in names:
        source, target = ROOT / name, scratch / name
        if not source.is_file():
            continue
        if target.is_file() and target.read_bytes() == source.read_bytes():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def build(scratch: Path, log) -> bool:
    start = time.time()
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=scratch,
                            capture_output=True, text=True, env=dict(os.environ, GMKERNELS_CUDA="0"))
    log(f"  build: rc {result.returncode} in {time.time() - start:.0f} s")
    if result.returncode:
        log(result.stderr[-3000:])
    return result.returncode == 0


def run_tests(scratch: Path, tests: tuple, timeout: float, log) -> tuple:
    env = dict(os.environ, PYTHONPATH=f"{scratch}{os.pathsep}{scratch / 'python'}", TRITON_INTERPRET="0",
               HYPOTHESIS_PROFILE=os.environ.get("HYPOTHESIS_PROFILE", "ci"))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.time()
    try:
        result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - start, ""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else result.stderr[-300:]
    failed = next((line for line in lines if line.startswith("FAILED")), summary)
    return ("passed" if result.returncode == 0 else "failed"), time.time() - start, failed


def apply(scratch: Path, mutant: Mutant, mutated: bool) -> None:
    path = scratch / mutant.path
    text = path.read_text()
    before, after = (mutant.original, mutant.mutated) if mutated else (mutant.mutated, mutant.original)
    count = text.count(before)
    if count != 1:
        raise SystemExit(f"{mutant.name}: expected the snippet once in {mutant.path}, found it {count} times")
    path.write_text(text.replace(before, after))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "gmkernels-mutate"))
    parser.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    parser.add_argument("--baseline", action="store_true", help="first run every test selection unmutated")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per test run")
    parser.add_argument("--report", help="also write the markdown table to this file")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:28} {m.path:42} {m.why}")
        return 0
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, flush=True)

    sync_scratch(scratch)
    for mutant in chosen:     # every snippet present before anything runs
        apply(scratch, mutant, True)
        apply(scratch, mutant, False)
    if any(m.compiled for m in chosen) and not build(scratch, log):
        raise SystemExit("the unmutated scratch copy does not build")
    if args.baseline:
        for tests in dict.fromkeys(m.tests for m in chosen):
            outcome, seconds, detail = run_tests(scratch, tests, args.timeout, log)
            log(f"baseline {' '.join(tests)}: {outcome} in {seconds:.0f} s {detail}")
            if outcome != "passed":
                raise SystemExit("the unmutated tests do not pass: a mutation run would mean nothing")
    rows = []
    extension_mutated = False   # the built extension still holds the last compiled mutant
    for mutant in chosen:
        log(f"{mutant.name}: {mutant.why}")
        if extension_mutated and not mutant.compiled:
            # A Python mutant runs on the unmutated extension: rebuild after a compiled one.
            if not build(scratch, log):
                raise SystemExit("the unmutated scratch copy does not build")
            extension_mutated = False
        apply(scratch, mutant, True)
        extension_mutated = extension_mutated or mutant.compiled
        try:
            if mutant.compiled and not build(scratch, log):
                outcome, seconds, detail = "build error", 0.0, ""
            else:
                outcome, seconds, detail = run_tests(scratch, mutant.tests, args.timeout, log)
        finally:
            apply(scratch, mutant, False)
        verdict = {"failed": "killed", "passed": "SURVIVED"}.get(outcome, outcome)
        log(f"  {verdict} in {seconds:.0f} s: {detail}")
        rows.append((mutant, verdict, seconds, detail))
    if any(m.compiled for m in chosen):
        build(scratch, log)   # leave the scratch extension unmutated
    table = ["| mutant | file | planted bug | result | s | first failing test |", "|---|---|---|---|---|---|"]
    for mutant, verdict, seconds, detail in rows:
        test = detail.split(" - ")[0].replace("FAILED ", "") if detail.startswith("FAILED") else detail
        table.append(f"| {mutant.name} | `{mutant.path}` | {mutant.why} | {verdict} | {seconds:.0f} | {test} |")
    killed = sum(verdict == "killed" for _, verdict, _, _ in rows)
    table.append(f"\n{len(rows)} planted, {killed} killed, {len(rows) - killed} not killed.")
    print("\n".join(table))
    if args.report:
        Path(args.report).write_text("\n".join(table) + "\n")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
