"""The compiled training step (ase_nemp.train.compiled) against eager autograd: same
energies, forces and stress, and the same gradient of a loss with respect to the
parameters, on batches of different sizes (one traced graph with symbolic sizes)."""

import pytest
import torch

from ase_nemp import collate
from ase_nemp.model import energy_forces_stress
from ase_nemp.nl import build_graph
from ase_nemp.testing import random_crystal, random_model, random_molecule, tiny_configs
from ase_nemp.train.compiled import CompiledDerivatives


def batch(structures, cutoff):
    return collate([build_graph(atoms, cutoff) for atoms in structures]).to(dtype=torch.float64)


def loss_of(out):
    """A loss that reaches every output, as the training loss does."""
    total = (out["energy"] ** 2).sum() + (out["forces"] ** 2).sum()
    if "stress" in out:
        total = total + (out["stress"] ** 2).sum()
    return total


@pytest.mark.parametrize("name, backend", [(name, None) for name in tiny_configs()] + [("nemp", "aot_eager")])
def test_compiled_step_matches_eager(name, backend):
    """The traced graph for every architecture; compiled by AOTAutograd for NEMP on two
    batches (each new batch shape compiles anew, slowly)."""
    model = random_model(tiny_configs()[name], seed=5)
    step = CompiledDerivatives(model, backend=backend)
    params = list(model.parameters())
    stress = model.conservative
    batches = [
        batch([random_crystal(n=6, seed=1), random_crystal(n=4, seed=2)], model.cutoff),
        batch([random_crystal(n=5, seed=3), random_molecule(n=7, seed=4), random_crystal(n=3, seed=6)], model.cutoff),
        batch([random_crystal(n=4, seed=7)], model.cutoff),
    ][: 3 if backend is None else 2]
    for graph in batches:  # the second batch has other numbers of atoms, edges and structures
        ref = energy_forces_stress(model, graph, stress=stress, training=True)
        out = step(graph, stress=stress)
        assert set(out) == set(ref)
        for key in ref:
            torch.testing.assert_close(out[key], ref[key], rtol=1e-12, atol=1e-12, msg=key)
        g_ref = torch.autograd.grad(loss_of(ref), params, allow_unused=True)
        g_out = torch.autograd.grad(loss_of(out), params, allow_unused=True)
        for a, b in zip(g_out, g_ref):
            if b is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["nemp", "equireann"])
def test_a_first_batch_of_one_structure_does_not_fix_the_batch_size(name):
    """Symbolic tracing turns sizes of 0 and 1 into constants: a graph traced on a batch of
    one structure (each process's share of a batch of 2 under torchrun) serves only
    batches of one. Later batches of other sizes must get a graph of their own."""
    model = random_model(tiny_configs()[name], seed=5)
    step = CompiledDerivatives(model, backend=None)
    stress = model.conservative
    for graph in (batch([random_molecule(n=5, seed=1)], model.cutoff),
                  batch([random_crystal(n=4, seed=2), random_molecule(n=6, seed=3)], model.cutoff),
                  batch([random_crystal(n=3, seed=4)], model.cutoff)):
        ref = energy_forces_stress(model, graph, stress=stress, training=True)
        out = step(graph, stress=stress)
        for key in ref:
            torch.testing.assert_close(out[key], ref[key], rtol=1e-12, atol=1e-12, msg=key)
    assert len(step._steps) == 2  # one graph for single structures, one for the rest


def test_compiled_step_sees_parameter_updates_and_checks_its_input():
    model = random_model(tiny_configs()["nemp"], seed=5)
    step = CompiledDerivatives(model, backend=None)
    graph = batch([random_molecule(n=5, seed=1)], model.cutoff)
    before = step(graph)["energy"].detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    after = step(graph)["energy"]
    torch.testing.assert_close(after, energy_forces_stress(model, graph)["energy"], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(before, after)
    bad = graph._replace(edge_index=graph.edge_index.clone().fill_(99))
    with pytest.raises(ValueError, match="outside"):
        step(bad)


@pytest.mark.parametrize("fault, message", [
    (lambda t: t * 1.01, "forces: largest difference"),  # wrong values
    (lambda t: t.detach() + 2 * (t - t.detach()), "parameter gradient"),  # right values, wrong derivative
])
def test_a_compiled_step_that_disagrees_with_eager_is_not_used(monkeypatch, fault, message):
    """Code generation can be wrong (inductor in torch 2.13 miscompiles LEIGNN's update):
    the first call compares with eager autograd, warns, and eager serves from then on."""
    model = random_model(tiny_configs()["nemp"], seed=5)
    step = CompiledDerivatives(model, backend=None)
    prepare = step._prepare

    def faulty(*args):
        traced, keys = prepare(*args)
        return (lambda *a: tuple(fault(t) if k == "forces" else t for k, t in zip(keys, traced(*a)))), keys

    monkeypatch.setattr(step, "_prepare", faulty)
    graph = batch([random_crystal(n=5, seed=1), random_molecule(n=6, seed=2)], model.cutoff)
    with pytest.warns(RuntimeWarning, match=message):
        out = step(graph)
    assert step.eager
    params = list(model.parameters())
    for later in (out, step(graph)):  # the first call's answer and every later one are eager's
        ref = energy_forces_stress(model, graph, training=True)
        torch.testing.assert_close(later["forces"], ref["forces"], rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(loss_of(later), params), torch.autograd.grad(loss_of(ref), params)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_compiled_step_evaluates_another_copy_without_grad():
    """Validation's use: the EMA copy (other parameter values, same layout) through the
    training step's graph under no_grad gives eager's energies and forces of that copy."""
    import copy

    model = random_model(tiny_configs()["nemp"], seed=5)
    step = CompiledDerivatives(model, backend=None)
    graph = batch([random_crystal(n=5, seed=1), random_molecule(n=6, seed=2)], model.cutoff)
    step(graph, stress=True)  # traced by the training call first, as in the trainer
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
        out = step(graph, stress=True, model=other)
    ref = energy_forces_stress(other, graph, stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-12, atol=1e-12, msg=key)
        assert not torch.allclose(out[key], energy_forces_stress(model, graph, stress=True)[key])
    stranger = random_model(tiny_configs()["nemp"].replace(num_channels=2), seed=5)
    with pytest.raises(ValueError, match="class and config"):
        step(graph, model=stranger)


def test_training_with_the_compiled_step_follows_eager_training(tmp_path, monkeypatch):
    """``training.compile: true`` in the trainer: the same steps as eager training (the
    traced graph, run without code generation here; inductor is timed by benchmarks/acac)."""
    from ase.io import write

    from .conftest import labelled, run_config, trained

    data = tmp_path / "train.extxyz"
    write(data, labelled(8, seed=300))
    built = []

    def traced_only(model, backend="inductor"):
        built.append(CompiledDerivatives(model, backend=None))
        return built[-1]

    monkeypatch.setattr("ase_nemp.train.trainer.compiled_or_none", traced_only)
    eager = trained(run_config(data, tmp_path / "eager", epochs=2))
    fast = trained(run_config(data, tmp_path / "compiled", epochs=2, compile=True))
    assert len(built) == 1 and built[0]._steps  # the compiled step was made and used
    for (name, p), q in zip(eager.model.state_dict().items(), fast.model.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=name)
    # validation (the EMA copy through the compiled graph) reports eager's losses
    assert len(fast.state["history"]) == 2
    for a, b in zip(eager.state["history"], fast.state["history"]):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-10)
        assert b["val_f_rmse"] == pytest.approx(a["val_f_rmse"], rel=1e-10)
