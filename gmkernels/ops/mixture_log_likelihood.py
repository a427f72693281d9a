"""mixture_log_likelihood: log sum_i w_i N(x; mean_i, diag(var_i)) for every row of x, and the
regular simplex used by MD-GAN."""
from __future__ import annotations

import math
import os

import torch

from .. import backend
from ..reference import mixture_log_likelihood as reference
from . import _autograd, _checks, _registry


def _check(x, means, var, log_weights):
    x = _checks.float_tensor(x, "x")
    means = _checks.float_tensor(means, "means")
    _checks.ndim(x, "x", 2, "(B, d)")
    _checks.ndim(means, "means", 2, "(C, d)")
    num_components, dim = means.shape
    if num_components == 0:
        raise ValueError("means must have at least one component (C >= 1), got shape (0, d)")
    if x.shape[1] != dim:
        raise ValueError(f"x must be (B, d) with d = {dim} (from means), got shape {tuple(x.shape)}")
    if isinstance(var, bool) or not isinstance(var, (int, float, torch.Tensor)):
        raise TypeError(f"var must be a float or a tensor, got {type(var).__name__}")
    if isinstance(var, torch.Tensor):
        _checks.float_tensor(var, "var")
        allowed = ((), (num_components,), (num_components, dim), (1, dim))
        if tuple(var.shape) not in allowed:
            raise ValueError(
                f"var must be a float or of shape (), (C,) = ({num_components},), (C, d) ="
                f" {(num_components, dim)} or (1, d) = {(1, dim)}; got {tuple(var.shape)}"
            )
        if _checks.checking_values() and var.numel():
            # A NaN makes both NaN, failing either comparison.
            smallest, largest, _, _, _ = _checks.summary(var)
            if not (smallest > 0 and largest < math.inf):
                raise ValueError(f"var must be finite and > 0, got min {smallest}, max {largest}")
    elif not (var > 0 and math.isfinite(var)):
        raise ValueError(f"var must be finite and > 0, got {var}")
    if log_weights is not None:
        _checks.float_tensor(log_weights, "log_weights")
        if tuple(log_weights.shape) != (num_components,):
            raise ValueError(
                f"log_weights must have shape (C,) = ({num_components},), got {tuple(log_weights.shape)}"
            )
        # The largest is NaN or +inf exactly when some entry is.
        if _checks.checking_values() and not _checks.summary(log_weights).high < math.inf:
            raise ValueError("log_weights must not hold NaN or +inf (-inf switches a component off)")
    named = {"x": x, "means": means, "var": var if isinstance(var, torch.Tensor) else None,
             "log_weights": log_weights}
    _checks.same_dtype(named)
    _checks.same_device(named)


def _component_tensors(x, means, var, log_weights):
    """var as (C,) (isotropic per component) or (C, d) (diagonal), log_weights as (C,): the two
    forms the kernels take. Expanding keeps autograd exact (a shared var gets the summed
    gradient)."""
    num_components, dim = means.shape
    if not isinstance(var, torch.Tensor):
        var = torch.full((num_components,), float(var), dtype=x.dtype, device=x.device)
    elif var.dim() == 0:
        var = var.expand(num_components)
    elif var.dim() == 2:
        var = var.expand(num_components, dim)
    if log_weights is None:
        log_weights = torch.full((num_components,), -math.log(num_components),
                                 dtype=x.dtype, device=x.device)
    return var, log_weights


def mixture_log_likelihood(x: torch.Tensor, means: torch.Tensor, var, log_weights=None):
    """Log-density of each row of x under a Gaussian mixture with diagonal covariances:

        log p(x_b) = logsumexp_c [ log_weights_c + log N(x_b; means_c, diag(var_c)) ]

    Args:
        x: (B, d) points.
        means: (C, d) component means.
        var: variance (not std): a float, a 0-dim tensor, a (C,) per-component isotropic
            variance, a (C, d) per-component diagonal, or (1, d) for one diagonal shared by all
            components. Must be > 0.
        log_weights: optional (C,) log mixture weights, used as given (pass
            ``log_softmax(logits)`` for learned weights); ``-inf`` switches a component off.
            Uniform weights if None.

    Returns:
        (B,) log-likelihoods, differentiable in x, means, var and log_weights to every order on
        every backend (the double backward recomputes the first-order gradient a B_chunk x C
        tile at a time). A row for which every component is off gets -inf; a row of x holding
        a NaN gets NaN.

    Terms of a row's sum below eps / C times its largest (eps of the dtype) weigh less than one
    rounding of the total together: the backward's responsibilities are 0 there, and the CPU
    float32 tiles with AVX-512 leave such terms out of the forward's sums on rows where most
    terms are such (peaked responsibilities), skipping their exps.

    The kernels build no B x C matrix unless told to keep one (below): C <= 65 (MD-GAN's
    simplex) runs a direct kernel; larger C (Parzen windows) tiles the components, computes each
    tile's inner products with a matrix product on data shifted by the centre of the means, and
    folds them into an online logsumexp; the backward recomputes the tiles from the saved
    log-likelihood. On the CPU the direct kernel also takes, whatever C, the forward for d < 16
    or B * C * d <= 2**23, the backward into x alone for d <= 16 or B * C * d <= 2**22, and the
    backward with gradients into means, var or log_weights for d <= 4, or d <= 16 and
    B * C * d <= 2**22, where it was measured faster than the tiled path (lower fixed costs; at
    small d the tiled path's per-pair epilogue costs as much as the direct kernel's whole work).
    The environment variable ``GMKERNELS_MLL_DIRECT_MAX_WORK`` (read on every call) replaces
    these rules by one limit on B * C * d, 0 sending every C > 65 to the tiled path.

    Keeping the exponents (CPU, cpp backend, eager mode): when a gradient will be taken, C > 65,
    d >= 16 and B * C * d >= 2**23 (2**22 from d = 32, 2**21 from d = 256), a forward whose
    (B, C) table of exponents fits in
    ``GMKERNELS_MLL_KEEP_MAX_BYTES`` (read on every call; 0 never keeps; by default 8 MiB,
    2**21 float32 entries, and 64 MiB from d = 256) keeps it, and the first backward reads it
    instead of recomputing its matrix product: 1.1-1.7x faster forward+backward where measured
    (B * C from 10^5 with d >= 128 to 2 * 10^6 with d >= 64; 1.2-1.65x from d = 256 at B = C =
    2048 to 4096), 1.05-1.17x at d = 16 to 32 (B * C = 10^6 to 2 * 10^6). The table lives
    until that backward (or until the output is freed). Larger tables are not kept by default
    below d = 256: they leave the cache between the passes over them and are fresh memory on
    every call (B = C = 3162, 40 MB: 0.8x at d = 64, 0.8-1.0x at d = 128).

    A gradient penalty (a first gradient with create_graph, then the backward of a function of
    it; same conditions and budget, C > 65 where the first backward is tiled) keeps the (B, C)
    responsibilities from its first backward to the double backward, which reads them instead
    of recomputing its matrix product: two products of ten fewer when the forward kept its
    exponents, one otherwise.
    """
    _check(x, means, var, log_weights)
    var, log_weights = _component_tensors(x, means, var, log_weights)
    if keeps_exponents(x, means, var, log_weights):
        return _KeepingExponents.apply(x, means, var, log_weights)
    return _OP(x.device, x, means, var, log_weights)


KEEP_MAX_BYTES = 8 << 20
"""The default of ``GMKERNELS_MLL_KEEP_MAX_BYTES`` below d = ``KEEP_LARGE_MIN_DIM``: the largest
B x C table kept from a forward to its backward."""
KEEP_LARGE_MAX_BYTES = 64 << 20
KEEP_LARGE_MIN_DIM = 256
"""From this d on the default budget is ``KEEP_LARGE_MAX_BYTES``: a product of 2 d FLOPs per
entry saved outweighs a table beyond the cache (forward+backward in x and means, 2 threads,
keeping 64 MiB / 8 MiB: B = C = 2048, d = 256 1.56x; B = C = 3162, d = 256 1.2x, d = 784
1.25x; B = C = 4096, d = 784 1.65x; B = 1000, C = 3162, d = 2048 1.27x; at B = C = 3162 below
d = 256: 0.8x at d = 64, 0.8-1.0x at d = 128)."""
_DIRECT_MAX_COMPONENTS = 65   # the kernels' kDirectMaxComponents
_KEEP_MIN_DIM = 16   # the CPU forward's kForwardTiledMinDim: below it the forward stays direct
# The least B C d at which keeping was measured faster, from these d on (fwd+bwd, keeping /
# recomputing at 2 threads: d = 16 needs 2^23, B = C = 316 1.05; d = 32 and 64 from 2^22,
# B = C = 256, d = 64 0.90-0.98 but B = C = 200 1.02 and 200 x 200 x 32 1.30; d = 512 and 784
# from 2^21, 72 x 72 x 512 0.93, 72 x 72 x 784 0.61, but 100 x 100 x 128 1.07).
_KEEP_MIN_WORK = ((256, 1 << 21), (32, 1 << 22), (0, 1 << 23))   # (from this d, the least B C d)


def _keep_min_work(dim: int) -> int:
    return next(work for least_dim, work in _KEEP_MIN_WORK if dim >= least_dim)


def keep_max_bytes(dim: int) -> int:
    """``GMKERNELS_MLL_KEEP_MAX_BYTES`` (read on every call), else ``KEEP_MAX_BYTES``, or
    ``KEEP_LARGE_MAX_BYTES`` from d = ``KEEP_LARGE_MIN_DIM``; 0 never keeps."""
    setting = os.environ.get("GMKERNELS_MLL_KEEP_MAX_BYTES", "")
    if not setting:
        return KEEP_LARGE_MAX_BYTES if dim >= KEEP_LARGE_MIN_DIM else KEEP_MAX_BYTES
    if not setting.isdigit():
        raise ValueError(f"GMKERNELS_MLL_KEEP_MAX_BYTES must be a non-negative integer, got {setting!r}")
    return int(setting)


def keeps_exponents(x, means, var, log_weights) -> bool:
    """Whether this call's forward keeps its (B, C) exponents for the backward instead of
    recomputing them there (one B x C x d matrix product less per forward+backward).

    Only in eager mode on the cpp backend with CPU tensors, when a gradient will be taken (grad
    mode on, an input requiring grad), and where it was measured faster (2-core AVX-512 machine,
    fwd+bwd against recomputing: 1.1-1.7x for B C from 10^5 with d >= 128 to 2 10^6 with
    d >= 64, 1.05-1.17x at d = 16 to 32 with B C = 10^6 to 2 10^6): C > 65 and d >= 16 (below,
    the direct kernel's territory: the forward keeps no tile there), B C d >= 2^23, or 2^22
    from d = 32, or 2^21 from d = 256 (below, the forward's extra tiled pass costs what the
    backward saves), and the table within
    ``keep_max_bytes(d)``: a larger one leaves the cache between the passes over it and is fresh
    memory on every call (below d = 256: 0.9-1.2x at 16 MB, 0.8-1.0x at B = C = 3162, 40 MB)."""
    if _registry.traced():
        return False
    num_rows, dim = x.shape
    num_components = means.shape[0]
    if not (x.device.type == "cpu" and torch.is_grad_enabled() and num_rows > 0
            and num_components > _DIRECT_MAX_COMPONENTS and dim >= _KEEP_MIN_DIM
            and num_rows * num_components * dim >= _keep_min_work(dim)
            and any(t.requires_grad for t in (x, means, var, log_weights))):
        return False
    if num_rows * num_components * x.element_size() > keep_max_bytes(dim):
        return False
    return backend.resolve("mixture_log_likelihood", _OP.implemented, x.device) == "cpp"


def _new_table(x, num_components: int) -> torch.Tensor:
    """An uninitialized (B, C) table for the kernels to keep (cpp backend only), its rows padded
    as the CPU tiles' are (a multiple of 16 elements, not one of 512): products into rows of
    3162 floats ran 1.7x slower than into rows of 3168."""
    stride = backend.compiled_module().mixture_tile_row_stride(num_components)
    return x.new_empty(x.shape[0], stride)[:, :num_components]


def _fake_keeping_exponents(x, means, var, log_weights, exponents):
    return x.new_empty(x.shape[0])


def _fake_backward_from_exponents(grad, x, means, var, log_weights, log_likelihood, exponents,
                                  x_grad, component_grads, var_grad):
    return _fake_backward(grad, x, means, var, log_weights, log_likelihood, x_grad,
                          component_grads, var_grad)


def _fake_backward_keeping_responsibilities(grad, x, means, var, log_weights, log_likelihood,
                                            table, table_has_exponents, x_grad, component_grads,
                                            var_grad):
    return _fake_backward(grad, x, means, var, log_weights, log_likelihood, x_grad,
                          component_grads, var_grad)


class _KeepingExponents(torch.autograd.Function):
    """The op with its exponents kept (see keeps_exponents): the forward writes them into a
    (B, C) table beside the log-likelihood, and the first backward that records no graph reads
    them (and overwrites them) instead of recomputing the product. A backward with create_graph,
    or a second one (retain_graph), runs the op's own backward formula, which recomputes.

    (Reusing freed tables instead of allocating each afresh was measured: 0-7% faster at
    B = C = 1448 to 4096, d = 64, so not done; it would hold memory between calls.)"""

    @staticmethod
    def forward(ctx, x, means, var, log_weights):
        exponents = _new_table(x, means.shape[0])
        log_likelihood = torch.ops.gmkernels.mixture_log_likelihood_keeping_exponents(
            x, means, var, log_weights, exponents)
        _setup_context(ctx, (x, means, var, log_weights), log_likelihood)
        ctx.exponents = exponents
        return log_likelihood

    @staticmethod
    def backward(ctx, grad):
        with _registry.wanted_input_grads_only(ctx):
            return _KeepingExponents.wanted_gradients(ctx, grad)

    @staticmethod
    def wanted_gradients(ctx, grad):
        exponents, ctx.exponents = ctx.exponents, None
        if exponents is None:
            return _backward(_registry.compiled_ops(), ctx, grad)
        if torch.is_grad_enabled():
            # A backward with create_graph (a gradient penalty's first gradient) on the cpp
            # backend, CPU, eager, as the forward was: the table becomes the responsibilities.
            return _backward_keeping_responsibilities(ctx, grad, exponents)
        x, means, var, log_weights, log_likelihood = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = torch.ops.gmkernels.mixture_log_likelihood_backward_from_exponents(
            grad, x, means, var, log_weights, log_likelihood, exponents, needs[0], any(needs[1:]),
            needs[2])
        return tuple(g if need else None for g, need in zip(grads, needs))


SIMPLEX_LAYOUTS = ("regular", "mdgan")


def _regular_simplex(d: int) -> torch.Tensor:
    """Unit circumradius, from the Helmert basis of the hyperplane orthogonal to (1, ..., 1) in
    R^(d+1): the projections of the d + 1 standard basis vectors, scaled to norm 1."""
    helmert = torch.zeros(d, d + 1, dtype=torch.float64)
    for k in range(1, d + 1):
        helmert[k - 1, :k] = 1.0
        helmert[k - 1, k] = -float(k)
        helmert[k - 1] /= math.sqrt(k * (k + 1))
    return helmert.T / math.sqrt(d / (d + 1))


def _mdgan_simplex(d: int) -> torch.Tensor:
    """The vertices of MD-GAN's published ``simplex_coordinates(d)`` (eghbalz/mdgan utils.py,
    adapted from Burkardt's simplex_coordinates), operation for operation in float64: vertex j < d
    starts as e_j, vertex d as a (1, ..., 1) with a = (1 - sqrt(d + 1)) / d, all are centred, then
    divided by s. The code takes the square root inside its loop over coordinates,
    s <- sqrt(s + x_i0^2), so s is a nested root rather than the norm of vertex 0 and the
    vertices end up with norm != 1 (0.9436 for d = 9)."""
    columns = torch.zeros(d, d + 1, dtype=torch.float64)
    columns[torch.arange(d), torch.arange(d)] = 1.0
    columns[:, d] = (1.0 - math.sqrt(float(1 + d))) / float(d)
    # Row i holds 1 and a and zeros, so the code's running sum is exactly 1 + a.
    centre = (1.0 + float(columns[0, d])) / float(d + 1)
    columns -= centre
    s = 0.0
    for i in range(d):
        s = math.sqrt(s + float(columns[i, 0]) ** 2)
    return (columns / s).T


def simplex_vertices(d: int, radius: float = 1.0, *, layout: str = "regular",
                     dtype=torch.float64, device=None) -> torch.Tensor:
    """The d + 1 vertices (rows, shape (d + 1, d)) of a regular simplex in R^d centred at the
    origin.

    ``layout="regular"``: every vertex at distance ``radius`` from the centre (circumradius);
    pairwise distances all radius * sqrt(2 (d + 1) / d).
    ``layout="mdgan"``: the published MD-GAN code's vertices, exactly (same orientation and
    scale: norm 0.9436 for d = 9, 0.8944 for d = 2), multiplied by ``radius``; radius=1 is the
    code's setting. Still a regular simplex centred at the origin, only smaller.
    """
    d = _checks.int_at_least(d, "d", 1)
    if isinstance(radius, bool) or not (isinstance(radius, (int, float)) and radius > 0
                                        and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite float > 0, got {radius}")
    if layout not in SIMPLEX_LAYOUTS:
        raise ValueError(f"layout must be one of {SIMPLEX_LAYOUTS}, got {layout!r}")
    unit = _regular_simplex(d) if layout == "regular" else _mdgan_simplex(d)
    return (unit * radius).to(dtype=dtype, device=device)


def _fake(x, means, var, log_weights):
    return x.new_empty(x.shape[0])


def _fake_backward(grad, x, means, var, log_weights, log_likelihood, x_grad, component_grads,
                   var_grad):
    # Gradients that were not asked for come back as 0-element tensors.
    def wanted(like, want):
        return torch.empty_like(like) if want else like.new_empty(0)
    return (wanted(x, x_grad), wanted(means, component_grads),
            wanted(var, component_grads and var_grad), wanted(log_weights, component_grads))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def keeps_responsibilities(x, means, component_grads: bool) -> bool:
    """Whether a backward that records a graph (a gradient penalty's first gradient) leaves its
    (B, C) responsibilities for the double backward (see _BackwardKeepingResponsibilities): in
    eager mode on the cpp backend with CPU tensors, where that backward takes the tiled path
    anyway (C > 65 and the sizes of the docstring above: no tiles to keep in the direct kernel,
    which is also the faster there), and the table within ``keep_max_bytes(d)``."""
    num_rows, num_components = x.shape[0], means.shape[0]
    return (x.device.type == "cpu" and not _registry.traced() and num_rows > 0
            and num_components > _DIRECT_MAX_COMPONENTS
            and num_rows * num_components * x.element_size() <= keep_max_bytes(x.shape[1])
            and backend.resolve("mixture_log_likelihood", _OP.implemented, x.device) == "cpp"
            and torch.ops.gmkernels.mixture_log_likelihood_backward_is_tiled(
                x, means, component_grads))


class _BackwardKeepingResponsibilities(torch.autograd.Function):
    """The first-order backward, recorded for a double backward, that leaves the responsibilities
    r_bc in a (B, C) table (the forward's kept exponents turned into them, or recomputed into a
    new table); the double backward of a penalty in x reads them instead of recomputing its
    matrix product and exps, once (it overwrites them; a second double backward, retain_graph,
    recomputes). The same gradients and derivatives as the backward op's. A gradient penalty
    (forward, gradient in x with create_graph, backward of its squared norm into x and the
    means) at B = 1024, C = 512, d = 32 runs seven matrix products where it ran ten: the first
    gradient reads the forward's kept exponents and no longer sums the means' gradient the pass
    drops (wanted_input_grads), and the double backward reads the responsibilities."""

    @staticmethod
    def forward(ctx, grad, x, means, var, log_weights, log_likelihood, table, table_has_exponents,
                x_grad, component_grads, var_grad):
        grads = torch.ops.gmkernels.mixture_log_likelihood_backward_keeping_responsibilities(
            grad, x, means, var, log_weights, log_likelihood, table, table_has_exponents, x_grad,
            component_grads, var_grad)
        _setup_backward_context(ctx, (grad, x, means, var, log_weights, log_likelihood), grads)
        ctx.responsibilities = table
        return grads

    @staticmethod
    def backward(ctx, *grad_grads):
        table, ctx.responsibilities = ctx.responsibilities, None
        with _registry.wanted_input_grads_only(ctx):
            grads = _double_backward(_registry.compiled_ops(), ctx, *grad_grads,
                                     responsibilities=table)
        return *grads, None, None, None, None, None, None


def _backward_keeping_responsibilities(ctx, grad, exponents=None):
    """The first-order backward through _BackwardKeepingResponsibilities: from the forward's
    kept ``exponents`` when given, else from a new table."""
    x, means, var, log_weights, log_likelihood = ctx.saved_tensors
    needs = ctx.needs_input_grad
    table = exponents if exponents is not None else _new_table(x, means.shape[0])
    grads = _BackwardKeepingResponsibilities.apply(
        grad, x, means, var, log_weights, log_likelihood.detach(), table, exponents is not None,
        needs[0], any(needs[1:]), needs[2])
    return tuple(g if need else None for g, need in zip(grads, needs))


def _backward(ops, ctx, grad):
    """The backward op gets the saved log-likelihood and recomputes the tiles. var's gradient is
    asked for apart (with a (C, d) variance it is half the component sums' work). A backward
    that records a graph where keeps_responsibilities holds leaves them for the double backward.

    The log-likelihood goes in detached: its double backward gives it no gradient (see
    _autograd), and an edge from the recorded gradient back to this op's node would make the
    engine run this backward again, on zeros, in every gradient penalty's backward (the whole
    first-order backward op a second time: a fifth of a penalty step at B = C = 256, d = 16)."""
    x, means, var, log_weights, log_likelihood = ctx.saved_tensors
    if (ops.namespace == _registry.COMPILED_NAMESPACE and torch.is_grad_enabled()
            and keeps_responsibilities(x, means, any(ctx.needs_input_grad[1:]))):
        return _backward_keeping_responsibilities(ctx, grad)
    needs = ctx.needs_input_grad
    grads = ops.mixture_log_likelihood_backward(
        grad, x, means, var, log_weights, log_likelihood.detach(), needs[0], any(needs[1:]),
        needs[2])
    return tuple(g if need else None for g, need in zip(grads, needs))


def _setup_backward_context(ctx, inputs, output):
    # Gradients that do not reach the loss come as None rather than zeros, so that a penalty in
    # x alone takes the closed form (penalty_in_x) and nothing is recomputed for the others.
    ctx.set_materialize_grads(False)
    grad, x, means, var, log_weights, log_likelihood = inputs[:6]
    ctx.save_for_backward(grad, x, means, var, log_weights, log_likelihood)


def _double_backward(ops, ctx, *grad_grads, responsibilities=None):
    grad, x, means, var, log_weights, log_likelihood = ctx.saved_tensors
    grads = gradient_vector_jacobian(grad_grads, grad, x, means, var, log_weights, log_likelihood,
                                     ctx.needs_input_grad[:5],
                                     fused_cpu_kernel=_registry.runs_fused_cpu_kernel(ops, x),
                                     responsibilities=responsibilities)
    return *grads, None, None, None, None


_LOG_2PI = math.log(2 * math.pi)


def exponents(x, means, var, log_weights) -> torch.Tensor:
    """(B, C) table E_bc = log w_c + log N(x_b; means_c, diag var_c) in differentiable torch ops,
    by inner products on data shifted by the centre of the means as the kernels do (no
    B x C x d tensor; the centre cancels in E, so it is held constant). var is (C,) or (C, d)."""
    centre = means.detach().mean(0)
    x_centred, means_centred = x - centre, means - centre
    dim = x.shape[1]
    if var.dim() == 2:
        precision = var.reciprocal()
        squared = ((x_centred * x_centred) @ precision.T
                   - 2 * x_centred @ (means_centred * precision).T
                   + (means_centred * means_centred * precision).sum(1))
        log_norm = torch.log(var).sum(1) + dim * _LOG_2PI
    else:
        squared = ((x_centred * x_centred).sum(1, keepdim=True) - 2 * x_centred @ means_centred.T
                   + (means_centred * means_centred).sum(1)) / var
        log_norm = dim * (torch.log(var) + _LOG_2PI)
    return log_weights - 0.5 * (squared + log_norm)


def gradient_vector_jacobian(grad_grads, grad, x, means, var, log_weights, log_likelihood, needs,
                             fused_cpu_kernel: bool = False, responsibilities=None) -> list:
    """The double backward: sum_o <first-order gradient o, grad_grads o> differentiated in (grad,
    x, means, var, log_weights) (those of ``needs``). The first-order gradient is recomputed with
    autograd through ``exponents`` and logsumexp, chunk of rows of x by chunk, so only a
    B_chunk x C tile lives at once; the row parts (grad, x) are concatenated, the component parts
    summed. The saved ``log_likelihood`` is recomputed too, so it gets no gradient (see _autograd).

    A penalty in x alone (only grad x has a cotangent) takes its closed form: with
    ``fused_cpu_kernel`` (the cpp backend, CPU tensors, a backward that records no graph: a
    gradient penalty's) the fused CPU kernel, which reads the responsibilities off the forward's
    ``log_likelihood``, in tiles of whole rows (or reads them off ``responsibilities``, the (B, C)
    table a first backward left, consuming it); otherwise ``penalty_in_x`` in torch ops, whose own
    derivatives give the higher orders.

    Only what is asked for is computed: the first-order gradients that have a cotangent (a
    gradient penalty in x alone recomputes grad x, not the component gradients), differentiated
    in the inputs of ``needs`` only; the other inputs are constants of the chunk's function."""
    cotangents = [_autograd.cotangent(g) for g in grad_grads]   # of grad x, means, var, log_weights
    inputs = (grad, x, means, var, log_weights)
    outputs = [o for o, c in enumerate(cotangents) if c is not None]   # o: input o + 1's gradient
    wanted = [i for i, need in enumerate(needs) if need]
    if not outputs or not wanted:
        return [None] * 5
    if outputs == [0] and fused_cpu_kernel:
        results = torch.ops.gmkernels.mixture_log_likelihood_double_backward(
            cotangents[0], *inputs, log_likelihood, *needs, responsibilities)
        return [result if need else None for result, need in zip(results, needs)]
    if outputs == [0]:
        return penalty_in_x(cotangents[0], *inputs, needs)
    is_row = (True, True, False, False, False)                 # (grad, x) are cut into chunks

    def first_order(chunk_inputs):
        grad_rows, *primals = chunk_inputs

        def log_likelihood(*differentiated):
            arguments = list(primals)
            for o, tensor in zip(outputs, differentiated):
                arguments[o] = tensor
            return torch.logsumexp(exponents(*arguments), 1)
        _, pullback = torch.func.vjp(log_likelihood, *[primals[o] for o in outputs])
        return pullback(grad_rows)

    totals = [None] * 5
    row_parts = {i: [] for i in wanted if is_row[i]}
    chunk = _autograd.rows_per_chunk(means.shape[0])           # B_chunk x C per tile
    for start in range(0, x.shape[0], chunk):
        rows = slice(start, start + chunk)
        chunk_inputs = [t[rows] if is_row[i] else t for i, t in enumerate(inputs)]

        def of_wanted(*differentiated, chunk_inputs=chunk_inputs):
            arguments = list(chunk_inputs)
            for i, tensor in zip(wanted, differentiated):
                arguments[i] = tensor
            return first_order(arguments)
        parts = _autograd.vector_jacobian(
            of_wanted, tuple(chunk_inputs[i] for i in wanted),
            tuple(cotangents[o][rows] if o == 0 else cotangents[o] for o in outputs))
        for i, part in zip(wanted, parts):
            if is_row[i]:
                row_parts[i].append(part)
            else:
                totals[i] = _autograd.add(totals[i], part)
    for i, collected in row_parts.items():
        totals[i] = torch.cat(collected)
    return [torch.zeros_like(t) if need and total is None else total
            for t, total, need in zip(inputs, totals, needs)]


def penalty_in_x(cotangent_x, grad, x, means, var, log_weights, needs) -> list:
    """The double backward when only grad x has a cotangent U (a gradient penalty in x), by its
    closed form: a few B_chunk x C passes and matmuls instead of differentiating a recomputed
    gradient. With r = softmax(E) the responsibilities, P = 1 / var and, for each pair,
    s_bc = dE_bc/dx_b . U_b = -sum_k U_bk (x_bk - m_ck) P_ck, the penalty's inner product is
    Phi = sum_b g_b sum_c r_bc s_bc. Writing q = g r and w = q (s - sum_c r s):
      dPhi/dg_b    = sum_c r_bc s_bc
      dPhi/dx_b    = -U_b (q P)_b - x_b (w P)_b + (w (m P))_b
      dPhi/dm_c    = P_c ((q^T U)_c + (w^T x)_c - m_c sum_b w_bc)
      dPhi/dv_ck   = P_ck^2 ((q^T (U x))_ck - m_ck (q^T U)_ck)
                     + 1/2 P_ck^2 ((w^T x^2)_ck - 2 m_ck (w^T x)_ck + m_ck^2 sum_b w_bc)
                     - 1/2 P_ck sum_b w_bc                  (summed to var's shape)
      dPhi/dlog w_c = sum_b w_bc
    with x and m shifted by the centre of the means, as in ``exponents``. Plain torch ops, so
    third and higher derivatives follow by autograd."""
    results = [None] * 5
    row_parts = ([], [])
    centre = means.detach().mean(0)
    means_centred = means - centre
    isotropic = var.dim() == 1
    precision = var.reciprocal()
    # An isotropic P_ck = P_c: the products with P below are a row sum times P (O(B C), not
    # O(B C d): three of the chunk's eight B x C x d products).
    component_precision = precision if isotropic else None
    precision = (precision[:, None] if isotropic else precision).expand_as(means)
    means_precision = means_centred * precision

    def times_precision(table):
        """table @ P for a (B_chunk, C) table: (B_chunk, d), or (B_chunk, 1) when isotropic."""
        return (table @ component_precision)[:, None] if isotropic else table @ precision

    chunk = _autograd.rows_per_chunk(means.shape[0])           # B_chunk x C per tile
    for start in range(0, x.shape[0], chunk):
        rows = slice(start, start + chunk)
        g, x_centred, u = grad[rows], x[rows] - centre, cotangent_x[rows]
        r = torch.softmax(exponents(x[rows], means, var, log_weights), 1)
        if isotropic:
            s = u @ means_precision.T - (u * x_centred).sum(1, keepdim=True) * component_precision
        else:
            s = u @ means_precision.T - (u * x_centred) @ precision.T
        s_mean = (r * s).sum(1, keepdim=True)
        q = g[:, None] * r
        w = q * (s - s_mean)
        if needs[0]:
            row_parts[0].append(s_mean.squeeze(1))
        if needs[1]:
            row_parts[1].append(w @ means_precision - u * times_precision(q)
                                - x_centred * times_precision(w))
        if not any(needs[2:]):
            continue
        w_total = w.sum(0)[:, None]
        q_u = q.T @ u
        w_x = w.T @ x_centred
        if needs[2]:
            part = precision * (q_u + w_x) - means_precision * w_total
            results[2] = _autograd.add(results[2], part)
        if needs[3]:
            squared = precision * precision
            part = (squared * (q.T @ (u * x_centred) - means_centred * q_u)
                    + 0.5 * squared * (w.T @ (x_centred * x_centred) - 2 * means_centred * w_x
                                       + means_centred * means_centred * w_total)
                    - 0.5 * precision * w_total)
            part = part.sum(1) if var.dim() == 1 else part.sum_to_size(var.shape)
            results[3] = _autograd.add(results[3], part)
        if needs[4]:
            results[4] = _autograd.add(results[4], w_total.squeeze(1))
    for i, collected in enumerate(row_parts):
        if needs[i]:
            results[i] = torch.cat(collected)
    return results


_OP = _registry.register(_registry.OpDeclaration(
    name="mixture_log_likelihood",
    schema="mixture_log_likelihood(Tensor x, Tensor means, Tensor var, Tensor log_weights) -> Tensor",
    backward_schema="mixture_log_likelihood_backward(Tensor grad, Tensor x, Tensor means, Tensor var,"
                    " Tensor log_weights, Tensor log_likelihood, bool x_grad, bool component_grads,"
                    " bool var_grad) -> (Tensor, Tensor, Tensor, Tensor)",
    reference=reference.mixture_log_likelihood,
    fake=_fake, fake_backward=_fake_backward,
    setup_context=_setup_context, backward=_backward,
    setup_backward_context=_setup_backward_context, double_backward=_double_backward,
))
IMPLEMENTED = _OP.implemented
if "cpp" in IMPLEMENTED:
    # The CPU ops that keep a table (eager only, see keeps_exponents and
    # keeps_responsibilities): fake tensors for opcheck.
    torch.library.register_fake("gmkernels::mixture_log_likelihood_keeping_exponents",
                                _fake_keeping_exponents)
    torch.library.register_fake("gmkernels::mixture_log_likelihood_backward_from_exponents",
                                _fake_backward_from_exponents)
    torch.library.register_fake(
        "gmkernels::mixture_log_likelihood_backward_keeping_responsibilities",
        _fake_backward_keeping_responsibilities)
