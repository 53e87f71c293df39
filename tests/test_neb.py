"""The NEB protocol of nemp demo and nemp learn (ase_nemp.neb) on a tiny committee."""

import numpy as np
import pytest

from ase_nemp import NEMPCalculator
from ase_nemp.model import Committee
from ase_nemp.neb import NEBProtocol, StopExploration, run_neb
from ase_nemp.testing import random_model, tiny_config

from .conftest import end_points


@pytest.fixture(scope="module")
def committee():
    return Committee([random_model(tiny_config(species=(1, 6, 8), cutoff=3.0), seed=s) for s in (1, 2, 3)])


def band(committee, **changes):
    protocol = NEBProtocol(images=5, steps=12, relax_steps=0, **changes)
    initial, final = end_points()
    return run_neb(initial, final, lambda: NEMPCalculator(committee), protocol, progress=False)


def test_threaded_and_batched_images_give_the_same_band(committee):
    # FIRE counts every step (ODE only its accepted ones), so the budget is met exactly
    one = band(committee, batched=False, workers=1, optimizer="FIRE")
    two = band(committee, batched=False, workers=2, optimizer="FIRE")
    batched = band(committee, optimizer="FIRE")
    for a, b, c in zip(one["images"], two["images"], batched["images"]):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_allclose(c.positions, a.positions, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(one["energies"], two["energies"])
    np.testing.assert_allclose(batched["energies"], one["energies"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(batched["energy_uncertainty"], one["energy_uncertainty"], rtol=0, atol=1e-10)
    assert one["neb_steps"] == 12 and not one["converged"]  # 12 steps: reported as not converged


@pytest.mark.parametrize("optimizer", ["FIRE", "ODE", "BFGS"])
def test_results_carry_the_committee_uncertainty(committee, optimizer):
    res = band(committee, optimizer=optimizer)
    assert res["energy_uncertainty"].shape == (5,) and res["energy_uncertainty"][0] == 0.0
    assert res["barrier"] == pytest.approx(res["energies"].max() - res["energies"][0])
    members = res["member_energies"]
    assert res["barrier_uncertainty"] == pytest.approx(np.std(members[res["peak"]], ddof=1))
    assert res["fmax"] > 0 and res["converged"] == (res["fmax"] <= 0.05)


def test_an_observer_can_stop_the_band(committee):
    seen = []

    def observer(images, step):
        seen.append(step)
        if step == 3:
            raise StopExploration("enough")

    initial, final = end_points()
    res = run_neb(initial, final, lambda: NEMPCalculator(committee), NEBProtocol(images=5, steps=50, relax_steps=0),
                  observer=observer, progress=False)
    assert res["stopped"] == "enough" and not res["converged"] and max(seen) == 3


def test_protocol_errors_name_the_problem():
    with pytest.raises(ValueError, match="images must be a whole number >= 3"):
        NEBProtocol(images=2)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        NEBProtocol(optimizer="LBFGS-magic")
    with pytest.raises(ValueError, match="workers"):
        NEBProtocol(workers=0)


def test_batched_neb_gives_bare_end_points_its_model_and_refuses_another_potential(committee):
    from ase.calculators.emt import EMT

    from ase_nemp import BatchedNEB

    calc = NEMPCalculator(committee)
    initial, final = end_points()
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    neb = BatchedNEB(images, calc, method="improvedtangent")  # bare end points: ASE's NEB would fail later
    neb.interpolate()
    assert np.isfinite(neb.get_forces()).all()
    assert calc.shares_model_with(initial.calc) and calc.shares_model_with(final.calc)
    initial.calc = NEMPCalculator(random_model(tiny_config(species=(1, 6, 8), cutoff=3.0), seed=9))
    with pytest.raises(ValueError, match="initial image's calculator is not this band's model"):
        BatchedNEB(images, calc)
    final.calc = EMT()
    initial.calc = calc.sibling()
    with pytest.raises(ValueError, match="final image's calculator"):
        BatchedNEB(images, calc)
    final.calc = None
    with pytest.raises(ValueError, match="spring constant k must be positive"):
        BatchedNEB(images, calc, k=-0.1)


def test_batched_neb_is_a_module_level_class():
    """Pickled by reference, subclassed by name, found where documentation tools look; and
    importing the package still does not import ase.mep."""
    import pickle
    import subprocess
    import sys

    from ase.mep import NEB

    from ase_nemp import BatchedNEB
    from ase_nemp.batched_neb import BatchedNEB as by_module
    from ase_nemp.neb import BatchedNEB as by_neb

    assert BatchedNEB is by_module is by_neb and issubclass(BatchedNEB, NEB)
    assert (BatchedNEB.__module__, BatchedNEB.__qualname__) == ("ase_nemp.batched_neb", "BatchedNEB")
    assert pickle.loads(pickle.dumps(BatchedNEB)) is BatchedNEB

    class Mine(BatchedNEB):
        pass

    assert Mine.__mro__[1] is BatchedNEB
    code = "import sys, ase_nemp; print('ase.mep' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
