"""One module per op: validate, pick the backend, call it (public names re-exported by
gmkernels/__init__.py)."""
