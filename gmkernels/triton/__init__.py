"""Triton kernels, one file per op. Imported lazily by the op wrappers: set TRITON_INTERPRET=1
before the first import to run them on CPU tensors."""
