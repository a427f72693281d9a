"""Readable pure-PyTorch versions of every op (one module per op): the ground truth of the tests
and the ``reference`` backend."""
