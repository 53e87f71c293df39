"""The training step's energy, forces and stress as one compiled graph.

A loss on forces needs the gradient of a gradient: forces are -dE/dx, and the loss's
gradient with respect to the parameters goes through them. ``torch.compile`` cannot
differentiate a compiled function twice, so the step is prepared in two stages:

1. ``make_fx`` traces :func:`~ase_nemp.model.derivatives.energy_forces_stress`, autograd's
   backward pass included, into one flat graph of tensor operations. Its inputs are the
   model's parameters and buffers and the batch's tensors, with symbolic sizes, so one
   graph serves batches of any number of atoms, edges and structures. Tracing makes
   sizes of 0 and 1 constants, as torch.compile does: a batch with a single structure
   (or atom, or no edge) gets a graph of its own (:func:`_size_class`).
   Autograd's ``detach`` of the results it keeps for the backward pass is taken out of
   that graph, so that the forces are differentiable through them (:func:`_without_detach`).
2. ``torch.compile`` (inductor) compiles that graph like any forward function; the
   loss's gradient with respect to the parameters is then an ordinary first derivative,
   which it compiles too.

The first call of each kind (with or without stress) traces and compiles, which takes one
to a few minutes on a CPU; every later call is the compiled code. The parameters are
inputs of the graph, not constants in it: the optimiser's updates are seen without
compiling again.

The compiler is trusted only after it has been checked: on the first call of each kind a
copy of the model with noise on its parameters is evaluated compiled and eagerly, and the
outputs and the parameters' gradient must agree to the dtype's rounding. If they do not
(code generation has bugs: inductor in torch 2.13 gets LEIGNN's update wrong), a warning
says by how much and every later call runs eagerly.
"""

from __future__ import annotations

import copy
import threading
import warnings

import torch

from ..graph import AtomicGraph
from ..model.derivatives import energy_forces_stress

__all__ = ["CompiledDerivatives"]


class _Step(torch.nn.Module):
    """``energy_forces_stress`` of the wrapped model as a module, for ``functional_call``."""

    def __init__(self, model: torch.nn.Module, stress: bool) -> None:
        super().__init__()
        self.model = model
        self.stress = stress

    def forward(self, *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        return energy_forces_stress(self.model, AtomicGraph(*tensors), stress=self.stress, training=True)


class CompiledDerivatives:
    """``energy_forces_stress(model, graph, stress=..., training=True)``, compiled.

    Parameters
    ----------
    model : AtomisticModel
        Any architecture. Its parameters are read at every call.
    backend : str or None
        ``torch.compile`` backend: ``"inductor"`` (generated C++/Triton code), or
        ``"aot_eager"`` to check compilation without code generation, or None to run
        the traced graph as it is (no compilation: quick to check, not faster).

    Calling it with an :class:`AtomicGraph` and ``stress`` returns the same dict as
    ``energy_forces_stress`` (``energy``, ``energies``, ``forces`` and, with stress,
    ``stress`` and ``virial``), differentiable with respect to the model's parameters.
    The graph's values are checked (:meth:`AtomicGraph.checked`, the species) before the
    compiled code sees them.

    ``model=`` evaluates another module with the same parameter layout (the trainer's
    EMA copy, for validation) through the same graph. Called under ``torch.no_grad()``
    the graph compiles once more, without the backward code the parameters' gradient
    needs: validation then costs a forward and the forces' backward only.
    """

    def __init__(self, model: torch.nn.Module, backend: str | None = "inductor") -> None:
        self.model = model
        self.backend = backend
        self._steps: dict[tuple, tuple[object, tuple[str, ...]]] = {}  # by (stress, size class)
        self._checked: set[tuple] = set()  # (stress, size class, grad enabled) compared with eager
        self.eager = False  # set when the compiled code disagreed with eager autograd
        self._lock = threading.Lock()

    def __call__(self, graph: AtomicGraph, stress: bool = False,
                 model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        if model is None:
            model = self.model
        elif model is not self.model and (type(model) is not type(self.model) or model.config != self.model.config):
            raise ValueError("CompiledDerivatives: model= must have the wrapped model's class and config")
        graph = graph.checked(model.dtype)
        model.species_index(graph.numbers)  # unknown elements raise here, not in compiled code
        if self.eager:
            return _eager(model, graph, stress)
        params = list(model.parameters())
        buffers = list(model.buffers())
        which = (stress, _size_class(graph))
        kind = which + (torch.is_grad_enabled(),)
        if kind not in self._checked:
            with self._lock:  # shard threads: one traces, compiles and checks, the others wait
                if which not in self._steps:
                    self._steps[which] = self._prepare(graph, stress, params, buffers)
                if kind not in self._checked:
                    step, keys = self._steps[which]
                    probe = _perturbed(model)  # every path carries a value (a fresh readout may be zero)
                    probe_params = list(probe.parameters())
                    out = dict(zip(keys, step(probe_params, list(probe.buffers()), *graph)))
                    problem = _disagreement(out, _eager(probe, graph, stress), probe_params, model.dtype)
                    self._checked.add(kind)
                    if problem:
                        self.eager = True
                        warnings.warn(f"training.compile: the compiled {model.architecture} step disagrees with "
                                      f"eager autograd ({problem}); it runs eagerly instead", RuntimeWarning,
                                      stacklevel=2)
                        return _eager(model, graph, stress)
        step, keys = self._steps[which]
        return dict(zip(keys, step(params, buffers, *graph)))

    def _prepare(self, graph: AtomicGraph, stress: bool, params, buffers):
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch.func import functional_call

        module = _Step(self.model, stress)
        names = [f"model.{n}" for n, _ in self.model.named_parameters()]
        buffer_names = [f"model.{n}" for n, _ in self.model.named_buffers()]
        keys: list[str] = []

        def step(params, buffers, *tensors):
            state = dict(zip(names, params)) | dict(zip(buffer_names, buffers))
            with torch.enable_grad():
                out = functional_call(module, state, tensors, strict=True)
            keys[:] = list(out)
            return tuple(out.values())

        # every size its own symbol: with duck shaping, a batch of 2 structures would share
        # the symbol of edge_index's leading 2 and the graph would only serve 2 structures
        from torch.fx.experimental import _config as fx_config

        with fx_config.patch(use_duck_shape=False):
            traced = make_fx(step, tracing_mode="symbolic")(params, buffers, *graph)
        traced = _without_detach(traced)
        if self.backend is None:
            return traced, tuple(keys)
        # on a CPU, inductor's C++ wrapper (instead of Python calling each generated kernel)
        # makes the acac training step 6 % faster (45 -> 42.5 ms on 4 molecules, one core)
        options = {"cpp_wrapper": True} if self.backend == "inductor" and graph.positions.device.type == "cpu" else None
        return torch.compile(traced, backend=self.backend, dynamic=True, options=options), tuple(keys)


def _size_class(graph: AtomicGraph) -> tuple[int, ...]:
    """The batch's numbers of atoms, edges and structures, with every value from 2 up
    alike. Symbolic tracing, like torch.compile, makes a size of 0 or 1 a constant of the
    graph (broadcasting and indexing code differs for them): a graph traced on a single
    structure would serve only single structures, and one traced on several would not
    be checked for one. Each class gets its own graph; almost every batch is in the
    class (2, 2, 2)."""
    return tuple(min(n, 2) for n in (graph.num_atoms, graph.num_edges, graph.num_graphs))


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with noise on every parameter, for the check against eager: a
    freshly built model may hold zeros (EquiREANN's readout) that hide the rest of the
    graph from its outputs and their gradient."""
    probe = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in probe.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
            p.add_(noise * (0.1 * float(p.abs().mean()) + 0.02))
    return probe


def _eager(model: torch.nn.Module, graph: AtomicGraph, stress: bool) -> dict[str, torch.Tensor]:
    """The uncompiled step (with gradients for the forces even under ``no_grad``)."""
    if torch.is_grad_enabled():
        return energy_forces_stress(model, graph, stress=stress, training=True)
    with torch.enable_grad():
        out = energy_forces_stress(model, graph, stress=stress, training=False)
    return {k: v.detach() for k, v in out.items()}


def _disagreement(out: dict, ref: dict, params: list[torch.Tensor], dtype: torch.dtype) -> str:
    """What differs between the compiled outputs and eager ones ('' if nothing): each
    output, and with gradients enabled the gradient of a loss that reaches every output,
    relative to its largest value, against 1e-3 in float32 and 1e-8 in float64. Both
    graphs are consumed (a compiled backward may not be run twice)."""
    tol = 1e-3 if dtype == torch.float32 else 1e-8

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / (b.abs().max() + torch.finfo(b.dtype).tiny)) if b.numel() else 0.0

    if set(out) != set(ref):
        return f"outputs {sorted(out)} against {sorted(ref)}"
    for key in ref:
        err = rel(out[key].detach(), ref[key].detach())
        if not err <= tol:
            return f"{key}: largest difference {err:.2g} of the largest value"
    if torch.is_grad_enabled() and any(v.requires_grad for v in out.values()):
        # a random weighting of every output (a plain sum would miss the forces: they add up to zero)
        gen = torch.Generator().manual_seed(0)
        weights = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device) for k, v in ref.items()}

        def grads(o):
            loss = sum((v * weights[k]).sum() for k, v in o.items())
            g = torch.autograd.grad(loss, params, allow_unused=True)
            return torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params)])

        err = rel(grads(out), grads(ref))
        if not err <= tol:
            return f"parameter gradient: largest difference {err:.2g} of the largest value"
    return ""


def _without_detach(traced: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The traced graph with every ``detach`` replaced by its input.

    When autograd keeps a forward result for its backward (sigmoid, sqrt, exp, ...) it
    stores a detached alias, and the trace records that ``detach``: the forces would then
    carry no gradient through those results, and the loss's gradient with respect to the
    parameters would be wrong. The only other ``detach`` is the fresh leaf made of the
    positions in ``energy_forces_stress``, whose outer derivative is never asked for; the
    models stop no gradient of their own (test_compiled.py compares every architecture's
    parameter gradient with eager autograd).
    """
    for node in list(traced.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            traced.graph.erase_node(node)
    traced.recompile()
    return traced


def compiled_or_none(model: torch.nn.Module, backend: str = "inductor") -> CompiledDerivatives | None:
    """A :class:`CompiledDerivatives` of ``model``, or None (after a warning that says why)
    where ``torch.compile`` is not available (e.g. Python versions it does not support)."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception as err:  # pragma: no cover - depends on the installation
        warnings.warn(f"training.compile: torch.compile is not available here ({err}); training uses eager PyTorch",
                      stacklevel=2)
        return None
    return CompiledDerivatives(model, backend)
