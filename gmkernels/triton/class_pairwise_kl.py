"""Triton kernels of class_pairwise_kl (math in csrc/kernels/class_pairwise_kl.h) and their
launchers.

The per-class means are a deterministic segmented reduction, as in the CUDA kernels: rows are
grouped by class with a stable sort, each class is cut into chunks of at most CHUNK_ROWS rows, one
program sums one chunk (x a block of columns), and one program per class adds its chunks in
order. No atomics, so every run gives the same bits. Sums, the class tables and the terms that
cancel (l - Lbar, the two gradient paths) are float64 whatever the input dtype: float32 results
then stay within float rounding of the float64 truth, and a sample alone in its class gets exactly
0. The launchers ``class_pairwise_kl`` and ``class_pairwise_kl_backward`` are registered as
``torch.ops.gmkernels_triton.*`` by gmkernels/ops/_registry.py, with the schemas, fake tensors and
autograd declared in gmkernels/ops/class_pairwise_kl.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK_ROWS = 64  # rows of one class summed by one program (the segment-reduction grain)


@triton.jit
def _chunk_sums_kernel(probs_ptr, row_weight_ptr, order_ptr, chunk_start_ptr, chunk_stop_ptr,
                       eps_ptr, partial_ptr, num_categories,
                       TAKE_LOG: tl.constexpr, CHUNK: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """partial[g, c] = sum over the rows of chunk g of log max(p_ic, eps) (TAKE_LOG) or
    w_i p_ic, in float64."""
    chunk = tl.program_id(0).to(tl.int64)   # int64 offsets: chunks x C may pass 2^31
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_mask = cols < num_categories
    start = tl.load(chunk_start_ptr + chunk)
    stop = tl.load(chunk_stop_ptr + chunk)
    positions = start + tl.arange(0, CHUNK)
    row_mask = positions < stop
    rows = tl.load(order_ptr + positions, mask=row_mask, other=0)
    mask = row_mask[:, None] & col_mask[None, :]
    probs = tl.load(probs_ptr + rows[:, None] * num_categories + cols[None, :], mask=mask, other=1.0)
    if TAKE_LOG:
        values = tl.log(tl.maximum(probs, tl.load(eps_ptr))).to(tl.float64)
    else:
        weight = tl.load(row_weight_ptr + rows, mask=row_mask, other=0.0).to(tl.float64)
        values = weight[:, None] * probs.to(tl.float64)
    values = tl.where(mask, values, 0.0)
    tl.store(partial_ptr + chunk * num_categories + cols, tl.sum(values, axis=0), mask=col_mask)


@triton.jit
def _class_mean_kernel(partial_ptr, chunk_begin_ptr, count_ptr, mean_ptr, num_categories,
                       BLOCK_COLS: tl.constexpr):
    """mean[k, c] = (sum of class k's chunk sums, in chunk order) / n_k; 0 for empty classes."""
    k = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_mask = cols < num_categories
    first = tl.load(chunk_begin_ptr + k)
    last = tl.load(chunk_begin_ptr + k + 1)
    total = tl.zeros([BLOCK_COLS], dtype=tl.float64)
    for chunk in range(first, last):
        total += tl.load(partial_ptr + chunk * num_categories + cols, mask=col_mask, other=0.0)
    count = tl.load(count_ptr + k).to(tl.float64)
    mean = tl.where(count > 0, total / tl.maximum(count, 1.0), 0.0)
    tl.store(mean_ptr + k * num_categories + cols, mean, mask=col_mask)


@triton.jit
def _forward_rows_kernel(probs_ptr, labels_ptr, class_mean_log_ptr, eps_ptr, kl_ptr,
                         num_samples, num_categories,
                         BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """kl_i = sum_c p_ic (l_ic - Lbar_{k_i c}), one log per element (Lbar float64)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < num_samples
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=0)
    eps = tl.load(eps_ptr)
    total = tl.zeros([BLOCK_ROWS], dtype=tl.float64)
    for col_start in range(0, num_categories, BLOCK_COLS):
        cols = col_start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols < num_categories)[None, :]
        probs = tl.load(probs_ptr + rows[:, None] * num_categories + cols[None, :], mask=mask,
                        other=0.0)
        class_mean = tl.load(class_mean_log_ptr + labels[:, None] * num_categories + cols[None, :],
                             mask=mask, other=0.0)
        log_probs = tl.log(tl.maximum(probs, eps)).to(tl.float64)
        terms = probs.to(tl.float64) * (log_probs - class_mean)
        total += tl.sum(tl.where(mask, terms, 0.0), axis=1)
    tl.store(kl_ptr + rows, total.to(kl_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _backward_kernel(grad_kl_ptr, probs_ptr, labels_ptr, class_mean_log_ptr, weighted_ptr, eps_ptr,
                     grad_probs_ptr, num_samples, num_categories,
                     BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """grad_ic = g_i (l_ic + m_ic - Lbar_{k_i c}) - m_ic W_{k_i c} / p_ic, m = [p >= eps]
    (W float64, the arithmetic in float64)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    row_mask = rows < num_samples
    mask = row_mask[:, None] & (cols < num_categories)[None, :]
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=0)
    grad = tl.load(grad_kl_ptr + rows, mask=row_mask, other=0.0).to(tl.float64)
    eps = tl.load(eps_ptr)
    offsets = rows[:, None] * num_categories + cols[None, :]
    class_offsets = labels[:, None] * num_categories + cols[None, :]
    probs = tl.load(probs_ptr + offsets, mask=mask, other=1.0)
    class_mean = tl.load(class_mean_log_ptr + class_offsets, mask=mask, other=0.0)
    weighted = tl.load(weighted_ptr + class_offsets, mask=mask, other=0.0)
    clamped = tl.maximum(probs, eps)
    passes = tl.where(probs >= eps, 1.0, 0.0).to(tl.float64)  # torch.clamp's gradient mask
    log_probs = tl.log(clamped).to(tl.float64)
    result = (grad[:, None] * (log_probs + passes - class_mean.to(tl.float64))
              - passes * weighted / clamped.to(tl.float64))
    tl.store(grad_probs_ptr + offsets, result.to(grad_probs_ptr.dtype.element_ty), mask=mask)


def _column_block(num_categories: int) -> int:
    return min(128, triton.next_power_of_2(num_categories))


class _ClassChunks:
    """Rows grouped by class (stable sort: ascending row within a class) and cut into chunks of
    at most CHUNK_ROWS rows of one class."""

    def __init__(self, labels: torch.Tensor, num_classes: int):
        device = labels.device
        self.order = torch.argsort(labels, stable=True)
        class_begin = torch.searchsorted(labels[self.order],
                                         torch.arange(num_classes + 1, device=device))
        self.counts = class_begin[1:] - class_begin[:-1]
        chunks_per_class = (self.counts + CHUNK_ROWS - 1) // CHUNK_ROWS
        self.chunk_begin = torch.zeros(num_classes + 1, dtype=torch.int64, device=device)
        self.chunk_begin[1:] = torch.cumsum(chunks_per_class, 0)
        self.num_chunks = int(self.chunk_begin[-1])
        chunk_class = torch.repeat_interleave(torch.arange(num_classes, device=device),
                                              chunks_per_class, output_size=self.num_chunks)
        index_in_class = torch.arange(self.num_chunks, device=device) - self.chunk_begin[chunk_class]
        self.chunk_start = class_begin[chunk_class] + index_in_class * CHUNK_ROWS
        self.chunk_stop = torch.minimum(self.chunk_start + CHUNK_ROWS, class_begin[chunk_class + 1])


def _class_means(probs, row_weight, chunks: _ClassChunks, eps_t, num_classes: int) -> torch.Tensor:
    """(K, C) float64: per-class mean of log max(p, eps) (row_weight None) or of w_i p_i."""
    num_categories = probs.shape[1]
    block_cols = _column_block(num_categories)
    column_blocks = triton.cdiv(num_categories, block_cols)
    partial = torch.empty(chunks.num_chunks, num_categories, dtype=torch.float64, device=probs.device)
    _chunk_sums_kernel[(chunks.num_chunks, column_blocks)](
        probs, probs if row_weight is None else row_weight, chunks.order, chunks.chunk_start,
        chunks.chunk_stop, eps_t, partial, num_categories,
        TAKE_LOG=row_weight is None, CHUNK=CHUNK_ROWS, BLOCK_COLS=block_cols)
    mean = torch.empty(num_classes, num_categories, dtype=torch.float64, device=probs.device)
    _class_mean_kernel[(num_classes, column_blocks)](
        partial, chunks.chunk_begin, chunks.counts, mean, num_categories, BLOCK_COLS=block_cols)
    return mean


def _eps_tensor(eps: float, probs: torch.Tensor) -> torch.Tensor:
    # Passed by pointer: a Python float argument would reach the kernel rounded to float32.
    return torch.tensor([eps], dtype=probs.dtype, device=probs.device)


def _table_rows(labels: torch.Tensor, num_classes: int, table_rows: int) -> torch.Tensor:
    """The compact table row of each sample's class: its label when the table holds every class,
    else the rank of its label among the distinct labels (in [0, num_classes), as the Python
    wrapper checks)."""
    if table_rows == num_classes:
        return labels.clone()
    return torch.unique(labels, sorted=True, return_inverse=True)[1]


def class_pairwise_kl(probs: torch.Tensor, labels: torch.Tensor, eps: float,
                      num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kl, the compact table of class means of log p, each sample's row in it)."""
    probs, labels = probs.contiguous(), labels.contiguous()
    num_samples, num_categories = probs.shape
    table_rows = min(max(num_samples, 1), num_classes)
    kl = probs.new_empty(num_samples)
    if num_samples == 0:
        return kl, probs.new_zeros(table_rows, num_categories), labels.new_empty(0)
    rows = _table_rows(labels, num_classes, table_rows)
    eps_t = _eps_tensor(eps, probs)
    mean_log = _class_means(probs, None, _ClassChunks(rows, table_rows), eps_t, table_rows)
    block_cols = _column_block(num_categories)
    block_rows = max(1, 2048 // block_cols)
    _forward_rows_kernel[(triton.cdiv(num_samples, block_rows),)](
        probs, rows, mean_log, eps_t, kl, num_samples, num_categories,
        BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols)
    return kl, mean_log.to(probs.dtype), rows


def class_pairwise_kl_backward(grad_kl: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                               class_mean_log: torch.Tensor, eps: float) -> torch.Tensor:
    grad_kl, probs = grad_kl.contiguous(), probs.contiguous()
    labels, class_mean_log = labels.contiguous(), class_mean_log.contiguous()
    num_samples, num_categories = probs.shape
    grad_probs = torch.empty_like(probs)
    if num_samples == 0:
        return grad_probs
    num_classes = class_mean_log.shape[0]
    eps_t = _eps_tensor(eps, probs)
    weighted = _class_means(probs, grad_kl, _ClassChunks(labels, num_classes), eps_t, num_classes)
    block_cols = _column_block(num_categories)
    block_rows = max(1, 2048 // block_cols)
    grid = (triton.cdiv(num_samples, block_rows), triton.cdiv(num_categories, block_cols))
    _backward_kernel[grid](grad_kl, probs, labels, class_mean_log, weighted, eps_t, grad_probs,
                           num_samples, num_categories, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols)
    return grad_probs
