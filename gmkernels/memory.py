"""The CPU output cache.

PyTorch's CPU allocator keeps no memory between tensors, and glibc maps every block over 32 MiB
afresh, so a large output is new memory on every call: Linux faults it in one 4 KiB page at a
time, zeroing each, on first touch. For ``mixture_sample``'s z that was half of the forward
(n = 10^5 samples of dimension 256, 102 MB: 47 ms against 19 ms with the cache, 2 threads). The
ops therefore carve their large CPU outputs (8 MiB or more: ``mixture_sample``'s z, the
gradients of ``class_pairwise_kl`` and ``mixture_log_likelihood``) from blocks
kept when earlier such outputs were freed, as PyTorch's CUDA allocator does for every tensor:

- an output takes the smallest kept block of at least its size and at most twice it, else a
  fresh one;
- a freed output's block is kept, most recently freed first, while everything kept fits in
  ``GMKERNELS_OUTPUT_CACHE_BYTES`` (read on every call; default 256 MiB, 0 keeps nothing); the
  blocks freed longest ago go back to the system first;
- where the system refuses a fresh block, every kept one goes back before the request is made
  once more.

So a training loop that samples the same shapes every step reuses the same memory, and at most
the limit stays allocated beyond your live tensors. A forked process (a DataLoader worker)
starts with a copy of what was kept. The outputs are ordinary CPU tensors (resizable,
picklable, shareable); only their memory comes from elsewhere, which PyTorch's memory profiler
does not see.
"""
from __future__ import annotations

OUTPUT_CACHE_BYTES = 256 << 20
"""The default of ``GMKERNELS_OUTPUT_CACHE_BYTES``."""


def output_cache_bytes() -> int:
    """Bytes of freed large outputs the ops keep for reuse now (0 without the compiled
    extension)."""
    from .backend import compiled_module

    compiled = compiled_module()
    return 0 if compiled is None else int(compiled.output_cache_kept_bytes())


def release_output_cache() -> None:
    """Return every kept block to the system (outputs still alive are not touched)."""
    from .backend import compiled_module

    compiled = compiled_module()
    if compiled is not None:
        compiled.release_output_cache()
