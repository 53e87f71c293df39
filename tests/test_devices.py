"""The model, calculator and training on every device torch finds: the CPU always, CUDA
where present (``ase_nemp.testing.devices``). Each device must give the CPU's numbers.

On CUDA, ``index_add_`` (the scatter sums) adds in an order that varies from run to run,
so results agree to rounding (about 1e-12 relative in float64), not bit for bit; the CPU
is bitwise reproducible.
"""

import numpy as np
import pytest
import torch

from ase_nemp import NEMPCalculator, collate
from ase_nemp.model import energy_forces_stress
from ase_nemp.nl import build_graph
from ase_nemp.testing import devices, evaluate, random_crystal, random_model, random_molecule, tiny_configs
from ase_nemp.train.compiled import CompiledDerivatives

from .conftest import run_config, trained

DEVICES = devices()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(tiny_configs()))
def test_model_gives_the_cpu_numbers(name, device):
    cpu = random_model(tiny_configs()[name], seed=2)
    model = random_model(tiny_configs()[name], seed=2).to(device)
    assert model.device.type == device
    atoms = random_crystal(n=7, seed=3)
    stress = model.conservative
    ref, out = evaluate(cpu, atoms, stress=stress), evaluate(model, atoms, stress=stress)
    for key in ref:
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("device", DEVICES)
def test_forces_are_the_energy_gradient_on_the_device(device):
    model = random_model(tiny_configs()["nemp"], seed=2).to(device)
    atoms = random_molecule(n=6, seed=4)
    forces = evaluate(model, atoms)["forces"]
    h, k, a = 1e-5, 2, 1
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[k, a] += sign * h
        energies.append(evaluate(model, moved)["energy"])
    assert forces[k, a] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_calculator_on_the_device(device):
    model = random_model(tiny_configs()["nemp"], seed=2)
    structures = [random_crystal(n=6, seed=5), random_crystal(n=4, seed=6)]
    on_cpu = NEMPCalculator(model)
    on_device = NEMPCalculator(model, device=device)
    for atoms in structures:
        on_device.calculate(atoms, ["energy", "forces", "stress"])
        on_cpu.calculate(atoms, ["energy", "forces", "stress"])
        for key in ("energy", "forces", "stress"):
            np.testing.assert_allclose(on_device.results[key], on_cpu.results[key], rtol=1e-10, atol=1e-10)
    images = [atoms.copy() for atoms in structures]
    on_device.calculate_batch(images, ["energy", "forces"])
    for atoms, image in zip(structures, images):
        on_cpu.calculate(atoms, ["energy", "forces"])
        np.testing.assert_allclose(image.get_forces(), on_cpu.results["forces"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_on_the_device(device):
    model = random_model(tiny_configs()["nemp"], seed=2).to(device)
    graph = collate([build_graph(a, model.cutoff, device=device) for a in (random_crystal(n=5, seed=1),
                                                                            random_crystal(n=3, seed=2))])
    out = CompiledDerivatives(model, backend=None)(graph, stress=True)
    ref = energy_forces_stress(model, graph, stress=True, training=True)
    for key in ref:
        assert out[key].device.type == device
        torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_the_device_follows_the_cpu(data_file, tmp_path, device):  # noqa: F811
    cpu = trained(run_config(data_file, tmp_path / "cpu", epochs=2))
    other = trained(run_config(data_file, tmp_path / f"on-{device}", epochs=2, device=device))
    assert next(other.model.parameters()).device.type == device
    for (name, p), q in zip(cpu.model.state_dict().items(), other.model.state_dict().values()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-8, atol=1e-10, msg=name)
    assert (tmp_path / f"on-{device}" / "best.pt").exists()


@pytest.mark.parametrize("name", sorted(tiny_configs()))
def test_seeded_models_leave_every_generator_as_it_was(name, monkeypatch):
    """Building a model with a seed draws its parameters reproducibly without touching the
    caller's generators: the CPU's state is restored, and no GPU generator is reseeded (on a
    GPU machine the user's CUDA random stream would otherwise restart for good)."""
    from ase_nemp.model import model_class

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    config = tiny_configs()[name]
    cls = model_class(name.split("-")[0])
    state = torch.random.get_rng_state()
    a, b = cls(config, seed=7), cls(config, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state) and not reseeded
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
