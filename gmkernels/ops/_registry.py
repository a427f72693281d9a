"""The registrar: every op is declared once in ``gmkernels/ops/<op>.py`` (an ``OpDeclaration``)
and ``register`` wires it everywhere, the same way for every op:

- the compiled namespace ``torch.ops.gmkernels`` (schemas defined by the C++ bindings, kernels
  per device there): fake tensors and autograd of the op and of its backward op;
- the Triton namespace ``torch.ops.gmkernels_triton``: the op and its backward op defined here from
  the declared schemas, launching ``gmkernels/triton/<op>.py``'s ``<op>`` and ``<op>_backward``,
  plain custom ops (under the Triton interpreter ``triton_op`` fails in torch.compile), with the
  same fake tensors and autograd;
- the backend dispatch: ``IMPLEMENTED`` (in one order for every op) and the call that runs the
  backend ``gmkernels.backend`` picks.

Adding an op is its own files (kernels, binding, ``ops/<op>.py``, ``reference/<op>.py``,
``triton/<op>.py``, tests) and one import line in ``gmkernels/__init__.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
from typing import Callable

import torch

from .. import backend

COMPILED_NAMESPACE = "gmkernels"
TRITON_NAMESPACE = "gmkernels_triton"


def _unchanged(outputs):
    return outputs


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpDeclaration:
    """One op, stated once.

    name: the op's name in both namespaces; ``<name>_backward`` is its backward op.
    schema, backward_schema: the schemas without namespace, byte-identical to the C++ bindings'
        (tests/test_backend.py checks it).
    An op that is not differentiable leaves backward_schema and the five backward entries None:
    it then has no backward op, and a backward through it raises ``not differentiable``.
    reference: the reference backend, called with the op's arguments; returns the public result.
    fake, fake_backward: fake-tensor implementations (torch.compile, opcheck).
    setup_context(ctx, inputs, output), backward(ops, ctx, *grads): the op's autograd, ``ops``
        being the namespace (so the backward calls the same backend's backward op).
    setup_backward_context, double_backward(ops, ctx, *grads): the backward op's autograd, so
        second and higher derivatives are exact (gmkernels/ops/_autograd.py).
    result: the public result from the kernel op's outputs (e.g. the first of two).
    """

    name: str
    schema: str
    reference: Callable
    fake: Callable
    backward_schema: str | None = None
    fake_backward: Callable | None = None
    setup_context: Callable | None = None
    backward: Callable | None = None
    setup_backward_context: Callable | None = None
    double_backward: Callable | None = None
    result: Callable = _unchanged

    @property
    def differentiable(self) -> bool:
        return self.backward_schema is not None

    @property
    def backward_name(self) -> str:
        return f"{self.name}_backward"


def on_tensor_device(launcher: Callable) -> Callable:
    """``launcher`` run with the CUDA device of its first tensor argument current: Triton launches
    on the current device, which is not that of tensors on cuda:1."""
    @functools.wraps(launcher)
    def launch(*args):
        device = next(arg.device for arg in args if isinstance(arg, torch.Tensor))
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            return launcher(*args)
    return launch


# Keeps the Triton custom ops alive (an op is deregistered when its definition is collected).
_TRITON_OPS = {}


def _define_triton_ops(declaration: OpDeclaration) -> None:
    launchers = importlib.import_module(f"gmkernels.triton.{declaration.name}")
    declared = [(declaration.name, declaration.schema)]
    if declaration.differentiable:
        declared.append((declaration.backward_name, declaration.backward_schema))
    for name, schema in declared:
        if not schema.startswith(f"{name}("):
            raise ValueError(f"the schema of {name} must start with '{name}(', got {schema!r}")
        _TRITON_OPS[name] = torch.library.custom_op(
            f"{TRITON_NAMESPACE}::{name}", on_tensor_device(getattr(launchers, name)), mutates_args=(),
            schema=schema[len(name):])


def traced() -> bool:
    """Under torch.compile or inside a torch.func transform (which keeps autograd levels of its
    own): the op must go through its registered autograd kernel."""
    return torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None


def records_no_graph() -> bool:
    """Whether an op called now can skip its autograd kernel: grad mode off and not traced.

    The autograd kernel of an op registered through torch.library is Python (it decides between
    recording and redispatching below autograd): calling the op below autograd directly saves that
    round trip, a few microseconds, when it would only redispatch."""
    return not torch.is_grad_enabled() and not traced()


def runs_fused_cpu_kernel(ops, tensor: torch.Tensor) -> bool:
    """Whether a double backward called with namespace ``ops`` may run a fused CPU kernel of the
    compiled extension: the cpp backend, CPU tensors, and no graph recorded (a gradient penalty's
    backward). Otherwise its torch-op form runs, whose own derivatives give the higher orders."""
    return (ops.namespace == COMPILED_NAMESPACE and tensor.device.type == "cpu"
            and records_no_graph())


def _below_autograd(overload: Callable, *args):
    with torch._C._AutoDispatchBelowAutograd():
        return overload(*args)


class _Namespace:
    """The ops of a namespace as the autograd formulas call them (``ops.<op>_backward(...)``): a
    call that records no graph (a first-order backward) goes below autograd directly; one that
    records in eager mode (a backward with create_graph: a gradient penalty's first gradient)
    through the op's autograd.Function when it has one (``recorded``, the same formulas as its
    registered autograd kernel, see _recorded_call); under torch.compile and torch.func the op's
    autograd kernel as usual."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._ops = getattr(torch.ops, namespace)
        self.recorded = {}   # op name -> its eager autograd.Function's apply

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_") or name == "recorded":
            raise AttributeError(name)
        packet = getattr(self._ops, name)
        overload = packet.default
        recorded = self.recorded.get(name)

        def call(*args):
            if records_no_graph():
                return _below_autograd(overload, *args)
            if recorded is not None and not traced():
                return recorded(*args)
            return packet(*args)
        setattr(self, name, call)   # looked up once per op
        return call


@functools.lru_cache(maxsize=None)
def _namespace(name: str) -> _Namespace:
    """One _Namespace per namespace, shared by every op's autograd formulas and eager calls."""
    return _Namespace(name)


def _register_fake_and_autograd(declaration: OpDeclaration, namespace: str) -> None:
    ops = _namespace(namespace)
    forward = f"{namespace}::{declaration.name}"
    backward = f"{namespace}::{declaration.backward_name}"
    torch.library.register_fake(forward, declaration.fake)
    if not declaration.differentiable:
        torch.library.register_autograd(forward, _not_differentiable(declaration.name),
                                        setup_context=lambda ctx, inputs, output: None)
        return
    torch.library.register_fake(backward, declaration.fake_backward)
    # (op name, setup_context, its backward formula): the op's, and its backward op's. Without
    # the second, torch would treat the backward op as a constant in a double backward and
    # silently drop its terms (with a deprecation warning).
    formulas = (
        (declaration.name, declaration.setup_context,
         lambda ctx, *grads: declaration.backward(ops, ctx, *grads)),
        (declaration.backward_name, declaration.setup_backward_context,
         lambda ctx, *grads: declaration.double_backward(ops, ctx, *grads)),
    )
    for name, setup_context, formula in formulas:
        torch.library.register_autograd(f"{namespace}::{name}", formula, setup_context=setup_context)
        # The same formulas for eager calls that record (see _recorded_call).
        ops.recorded[name] = _recorded_call(name, getattr(ops._ops, name).default, setup_context,
                                            formula)


def _not_differentiable(name: str) -> Callable:
    def backward(ctx, *grads):
        raise RuntimeError(f"gmkernels.{name} is not differentiable; detach its inputs")
    return backward


def compiled_ops() -> _Namespace:
    """The compiled extension's ops as the autograd formulas call them."""
    return _namespace(COMPILED_NAMESPACE)


class RegisteredOp:
    """A declared op wired to every backend: ``IMPLEMENTED`` and the call on the chosen one."""

    def __init__(self, declaration: OpDeclaration):
        self.declaration = declaration
        self.kernels = {}
        if "triton" in backend.backends():
            _define_triton_ops(declaration)
            _register_fake_and_autograd(declaration, TRITON_NAMESPACE)
            self.kernels["triton"] = getattr(torch.ops, TRITON_NAMESPACE)
        if backend.compiled_module() is not None:
            _register_fake_and_autograd(declaration, COMPILED_NAMESPACE)
            compiled = getattr(torch.ops, COMPILED_NAMESPACE)
            self.kernels.update(cpp=compiled, cuda=compiled)
        self.implemented = ("reference",) + tuple(self.kernels)
        # Per backend: the op's packet (torch.ops.<namespace>.<op>), and the eager call that
        # records its autograd (None for an op without a backward: the packet raises there).
        self._calls = {}
        for name, ops in self.kernels.items():
            namespace = TRITON_NAMESPACE if name == "triton" else COMPILED_NAMESPACE
            self._calls[name] = (getattr(ops, declaration.name),
                                 _namespace(namespace).recorded.get(declaration.name))

    def __call__(self, device: torch.device, *args):
        """The op's public result on the backend chosen for tensors on ``device``."""
        name = backend.resolve(self.declaration.name, self.implemented, device)
        if name == "reference":
            return self.declaration.reference(*args)
        packet, recorded = self._calls[name]
        if traced():
            return self.declaration.result(packet(*args))
        if not (torch.is_grad_enabled() and _any_requires_grad(args)):
            # Nothing to record: below the Python autograd kernel directly (see records_no_graph).
            return self.declaration.result(_below_autograd(packet.default, *args))
        if recorded is None:
            return self.declaration.result(packet(*args))
        return self.declaration.result(recorded(*args))


def _any_requires_grad(args) -> bool:
    return any(isinstance(arg, torch.Tensor) and arg.requires_grad for arg in args)


def wanted_input_grads(needs_input_grad: tuple) -> tuple:
    """``needs_input_grad`` of the autograd node now running its backward, narrowed to the inputs
    whose gradient this backward pass will use.

    ``needs_input_grad`` says which inputs require grad, not which gradients the pass asked for:
    ``torch.autograd.grad(loss, x)`` (a gradient penalty's first gradient, R1) still marks the
    means or the mixture's parameters, and a backward would compute their gradients only for the
    engine to drop them (half of the log-likelihood's first backward at B = C = 256, d = 16). The
    engine knows: an input's edge leads to a node it will execute, to a leaf it captures for
    ``autograd.grad`` (the check raises for those), or to neither. Anything unexpected (no node
    running, an API change) keeps ``needs_input_grad`` as it is."""
    try:
        node = torch._C._current_autograd_node()
        edges = node.next_functions
    except Exception:   # noqa: BLE001 - an optimisation only: never fail a backward over it
        return needs_input_grad
    # The edges are the tensor inputs' in order (non-tensor inputs have none), those of inputs
    # not requiring grad without a node: the inputs needing grad meet the edges with a node in
    # the same order. If the counts differ, the layout is not the one assumed: narrow nothing.
    next_nodes = [next_node for next_node, _ in edges if next_node is not None]
    needing = [i for i, need in enumerate(needs_input_grad) if need]
    if len(next_nodes) != len(needing):
        return needs_input_grad
    wanted = list(needs_input_grad)
    for i, next_node in zip(needing, next_nodes):
        wanted[i] = _engine_uses(next_node)
    return tuple(wanted)


@contextlib.contextmanager
def wanted_input_grads_only(ctx):
    """``ctx.needs_input_grad`` narrowed by ``wanted_input_grads`` while the autograd node of
    ``ctx`` runs its backward; restored after, since a retained graph's next pass may want other
    gradients."""
    requiring = ctx.needs_input_grad
    if sum(requiring) >= 2:
        ctx.needs_input_grad = wanted_input_grads(requiring)
    try:
        yield
    finally:
        ctx.needs_input_grad = requiring


def _engine_uses(node) -> bool:
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except Exception:   # noqa: BLE001
        # Raised (a RuntimeError) for a leaf that autograd.grad captures: its gradient is one of
        # the results; anything else unexpected keeps the gradient too.
        return True


def _recorded_call(name: str, overload: Callable, setup_context: Callable,
                   backward: Callable) -> Callable:
    """An op (``name``: the op or its backward op) in eager mode with its autograd recorded by an
    autograd.Function of the same formulas (``setup_context(ctx, inputs, output)``,
    ``backward(ctx, *grads)``) as its registered autograd kernel, without that kernel's generic
    Python layers (dispatch back into Python, argument defaults, metadata, keyset arithmetic):
    ~8 us less a forward call at small sizes, and ~0.1 ms less a first gradient with
    create_graph (a gradient penalty's), which calls the backward op this way."""

    class Recorded(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = _below_autograd(overload, *args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            with wanted_input_grads_only(ctx):
                return backward(ctx, *grads)

    Recorded.__name__ = Recorded.__qualname__ = f"{name}_autograd"
    return Recorded.apply


def register(declaration: OpDeclaration) -> RegisteredOp:
    return RegisteredOp(declaration)
