"""Many structures per model call: NEMPCalculator.calculate_batch, BatchedNEB, relax_many
and nemp relax give exactly what one calculator per structure gives."""

from contextlib import nullcontext

import numpy as np
import pytest
from ase.constraints import FixAtoms
from ase.io import read, write
from ase.mep import NEB
from ase.optimize import BFGS, FIRE

from ase_nemp import BatchedNEB, NEMPCalculator, relax_many
from ase_nemp.calculator import StressUnavailableError
from ase_nemp.cli import main
from ase_nemp.io import save
from ase_nemp.model import Committee
from ase_nemp.testing import random_crystal, random_model, random_molecule, tiny_config

from .conftest import end_points

CONFIG = tiny_config(species=(1, 6, 8), cutoff=3.0)


@pytest.fixture(scope="module", params=["single", "committee"])
def model(request):
    if request.param == "single":
        return random_model(CONFIG, seed=1)
    return Committee([random_model(CONFIG, seed=s) for s in (1, 2, 3)])


def mixed_structures():
    """A crystal, a constrained molecule and a small molecule: different sizes and pbc."""
    crystal = random_crystal(n=6, seed=3, symbols="CO", min_dist=1.1)
    molecule = random_molecule(n=7, seed=4, symbols="HCO", min_dist=0.9)
    molecule.set_constraint(FixAtoms([0]))
    small = random_molecule(n=3, seed=5, symbols="CO", min_dist=1.0)
    return [crystal, molecule, small]


def alone(model, atoms, properties):
    calc = NEMPCalculator(model)
    copy = atoms.copy()
    copy.calc = calc
    calc.calculate(copy, properties)
    return calc.results


@pytest.mark.parametrize("max_atoms", [4096, 8])  # one call, and split into several
def test_batch_equals_one_calculator_per_structure(model, max_atoms):
    structures = mixed_structures()
    calc = NEMPCalculator(model)
    calc.calculate_batch(structures, ("energy", "forces"), max_atoms=max_atoms)
    for atoms in structures:
        expected = alone(model, atoms, ("energy", "forces"))
        assert atoms.calc is not calc and atoms.calc.model is calc.model  # a sibling: same weights, no copy
        assert set(atoms.calc.results) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(atoms.calc.results[key], value, rtol=1e-10, atol=1e-10, err_msg=key)
        np.testing.assert_array_equal(atoms.get_forces(apply_constraint=False), atoms.calc.results["forces"])
    assert np.all(structures[1].get_forces()[0] == 0)  # the fixed atom


def test_batch_stress_for_periodic_structures(model):
    crystals = [random_crystal(n=n, seed=10 + n, symbols="CO", min_dist=1.1) for n in (4, 6)]
    NEMPCalculator(model).calculate_batch(crystals, ("energy", "forces", "stress"))
    for atoms in crystals:
        np.testing.assert_allclose(atoms.get_stress(), alone(model, atoms, ("stress",))["stress"], atol=1e-10)
    with pytest.raises(StressUnavailableError, match="structure 1 of the batch"):
        NEMPCalculator(model).calculate_batch([crystals[0], random_molecule(n=3, seed=1, symbols="CO")],
                                              ("energy", "stress"))


def test_current_results_are_not_recomputed(model, monkeypatch):
    structures = mixed_structures()
    calc = NEMPCalculator(model)
    calls = []
    original = NEMPCalculator._evaluate
    monkeypatch.setattr(NEMPCalculator, "_evaluate",
                        lambda self, s, lists, props, **kw: calls.append(len(s)) or original(self, s, lists, props, **kw))
    calc.calculate_batch(structures)
    structures[2].positions[0, 0] += 0.05
    calc.calculate_batch(structures)
    assert calls == [3, 1]  # only the moved structure, and its own calculator reads the stored results
    structures[0].get_forces()
    assert calls == [3, 1]


def make_band(model, batched, n=6):
    initial, final = end_points()
    for end in (initial, final):
        end.calc = NEMPCalculator(model)
    images = [initial] + [initial.copy() for _ in range(n - 2)] + [final]
    if batched:
        neb = BatchedNEB(images, NEMPCalculator(model), climb=True, method="improvedtangent")
    else:
        for image in images[1:-1]:
            image.calc = NEMPCalculator(model)
        neb = NEB(images, climb=True, method="improvedtangent")
    neb.interpolate(method="idpp")
    return images, neb


@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS", "ODE"])
def test_batched_neb_gives_the_band_of_ase_neb(model, optimizer):
    bands = []
    for batched in (False, True):
        images, neb = make_band(model, batched)
        if optimizer == "ODE":
            from ase.mep.neb import NEBOptimizer

            NEBOptimizer(neb, logfile=None, method="ode").run(fmax=0.05, steps=8)
        else:
            {"FIRE": FIRE, "BFGS": BFGS}[optimizer](neb, logfile=None).run(fmax=0.05, steps=8)
        bands.append((np.array([im.positions for im in images]), np.array([im.get_potential_energy() for im in images])))
    np.testing.assert_allclose(bands[1][0], bands[0][0], atol=1e-9)
    np.testing.assert_allclose(bands[1][1], bands[0][1], atol=1e-9)
    assert np.abs(bands[1][0][2] - bands[1][0][2][0]).max() > 0  # the band moved off its start


def test_batched_neb_evaluates_the_moving_images_in_one_call(model, monkeypatch):
    from ase.mep import NEBTools

    images, neb = make_band(model, batched=True, n=7)
    sizes = []
    original = NEMPCalculator._evaluate
    monkeypatch.setattr(NEMPCalculator, "_evaluate",
                        lambda self, s, lists, props, **kw: sizes.append(len(s)) or original(self, s, lists, props, **kw))
    FIRE(neb, logfile=None).run(fmax=0.05, steps=3)
    # the end points once each (their own calculators), then five moving images per call
    assert sorted(sizes) == [1, 1] + [5] * (len(sizes) - 2) and len(sizes) >= 4
    barrier, _ = NEBTools(images).get_barrier(fit=False)
    assert np.isfinite(barrier)


@pytest.mark.parametrize("optimizer", ["BFGS", "FIRE"])
@pytest.mark.filterwarnings("ignore:.*outside the model's confidence")  # random committees disagree
def test_relax_many_follows_each_structure_s_own_optimizer(model, optimizer):
    structures = mixed_structures()[1:] + [random_molecule(n=5, seed=9, symbols="HCO", min_dist=1.0)]
    expected = []
    for atoms in structures:
        copy = atoms.copy()
        copy.calc = NEMPCalculator(model)
        opt = {"BFGS": BFGS, "FIRE": FIRE}[optimizer](copy, logfile=None)
        done = opt.run(fmax=0.05, steps=40)
        expected.append((copy.positions.copy(), opt.nsteps, bool(done)))
    results = relax_many(structures, NEMPCalculator(model), fmax=0.05, steps=40, optimizer=optimizer, progress=False)
    for atoms, result, (positions, nsteps, done) in zip(structures, results, expected):
        np.testing.assert_allclose(atoms.positions, positions, atol=1e-9)
        assert (result.steps, result.converged) == (nsteps, done)
        assert result.converged == (result.fmax < 0.05)
    assert len({r.steps for r in results}) > 1  # each stopped at its own convergence


def test_nemp_relax_command(tmp_path, capsys):
    model = random_model(CONFIG, seed=1)
    save(model, tmp_path / "m.pt")
    write(tmp_path / "in.extxyz", [random_molecule(n=n, seed=n, symbols="HCO", min_dist=1.0) for n in (3, 4, 5)])
    code = main(["relax", str(tmp_path / "in.extxyz"), "--model", str(tmp_path / "m.pt"), "--fmax", "0.05",
                 "--steps", "200", "--output", str(tmp_path / "out.extxyz"), "--quiet"])
    out = capsys.readouterr().out
    relaxed = read(tmp_path / "out.extxyz", ":")
    assert len(relaxed) == 3 and all(a.info["converged"] for a in relaxed) and code == 0
    for atoms in relaxed:
        assert np.sqrt((atoms.get_forces() ** 2).sum(1).max()) < 0.05 and "relax_steps" in atoms.info
    assert "3 of 3" in out
    assert main(["relax", str(tmp_path / "in.extxyz"), "--model", str(tmp_path / "m.pt"),
                 "--output", str(tmp_path / "out.extxyz")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("architecture", ["nemp", "equireann", "leignn-direct", "leignn-conservative"])
def test_every_architecture_drives_neb_and_md_through_the_calculator(architecture):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from ase_nemp.testing import tiny_configs

    model = random_model(tiny_configs(cutoff=3.0)[architecture], seed=2)
    images, neb = make_band(model, batched=True)
    FIRE(neb, logfile=None).run(fmax=0.05, steps=5)
    assert np.isfinite([im.get_potential_energy() for im in images]).all()
    atoms = random_molecule(n=6, seed=3, symbols="HCO", min_dist=1.0)
    atoms.calc = NEMPCalculator(model)
    start = atoms.positions.copy()
    VelocityVerlet(atoms, 0.2 * units.fs).run(10)
    assert np.isfinite(atoms.get_potential_energy()) and np.abs(atoms.positions - start).max() > 0


def test_relax_and_batch_inputs_that_cannot_work_get_one_clear_error(model):
    calc = NEMPCalculator(model)
    a, b = random_molecule(n=4, seed=1, symbols="CO", min_dist=1.1), random_molecule(n=4, seed=2, symbols="CO", min_dist=1.1)
    with pytest.raises(ValueError, match="structures 0 and 2 are one and the same Atoms object"):
        relax_many([a, b, a], calc, progress=False)
    for kwargs, match in (({"fmax": float("inf")}, "fmax"), ({"fmax": 0}, "fmax"), ({"steps": -5}, "steps"),
                          ({"max_atoms": 0}, "max_atoms"), ({"max_atoms": -1}, "max_atoms"),
                          ({"max_atoms": float("nan")}, "max_atoms"), ({"max_atoms": 2.5}, "max_atoms"),
                          ({"max_atoms": "10"}, "max_atoms"), ({"optimizer": "ODE12r"}, "single-step"),
                          ({"optimizer": "CellAwareBFGS"}, "cell filter")):
        with pytest.raises(ValueError, match=match):
            relax_many([a, b], calc, progress=False, **kwargs)
    with pytest.raises(TypeError, match="list of Atoms"):
        relax_many(a, calc, progress=False)
    with pytest.raises(TypeError, match="list of Atoms"):
        calc.calculate_batch(a)
    with pytest.raises(TypeError, match="not the text 'stress'"):
        calc.calculate_batch([a, b], properties="stress")
    with pytest.raises(Exception, match="'magmom' not available"):
        calc.calculate_batch([a, b], properties=("magmom",))
    for bad in (0, -1, float("nan"), 2.5, "10", True):
        with pytest.raises(ValueError, match="max_atoms"):
            calc.calculate_batch([a, b], max_atoms=bad)
    with pytest.raises(TypeError, match="structure 1 of the batch is a str"):
        calc.calculate_batch([a, "b.xyz"])
    broken = b.copy()
    broken.positions[1] = np.nan
    with pytest.raises(ValueError, match=r"structure 1 of the batch: non-finite"):
        calc.calculate_batch([a, broken], max_atoms=4)  # the index in the caller's list, not in the chunk
    assert np.isfinite(a.get_potential_energy())  # the others are unharmed


def test_a_huge_box_costs_no_memory_or_is_refused():
    """A molecule in a 1e5 Å box: open, it is gridded over its own extent; periodic, the C
    neighbour search grids it coarsely (the same energy), and matscipy's, which would
    need gigabytes, refuses it by name."""
    from ase import Atoms

    from ase_nemp.nl import cells, check_structure, matscipy_neighbour_list

    calc = NEMPCalculator(random_model(CONFIG, seed=1))
    ref = Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[20] * 3)
    ref.calc = calc
    far = Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[1e5] * 3, pbc=False)
    far.calc = NEMPCalculator(random_model(CONFIG, seed=1))
    assert far.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    periodic = Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[1e5] * 3, pbc=True)
    if cells.available():
        periodic.calc = NEMPCalculator(random_model(CONFIG, seed=1))
        assert periodic.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    with pytest.raises(ValueError, match="far too large for its 2 atoms"):
        matscipy_neighbour_list(*check_structure(periodic.positions, periodic.cell.array, periodic.pbc), 3.0)


def test_relax_reports_the_committee_s_doubts_and_keeps_finished_work(tmp_path, capsys, monkeypatch):
    """A structure ending outside the committee's confidence is flagged in the result, the
    output file, on standard error and in the exit code; an interrupted nemp relax writes
    every structure where it stopped; an output name ASE cannot write is refused first."""
    committee = Committee([random_model(CONFIG, seed=s) for s in (1, 2, 3)])
    committee.metadata = {"confidence": {"forces_uncertainty": 1e3, "energy_uncertainty": 1e3}}
    structures = [random_molecule(n=n, seed=n, symbols="HCO", min_dist=1.0) for n in (3, 4, 5)]
    strict = Committee([random_model(CONFIG, seed=s) for s in (1, 2, 3)])
    strict.metadata = {"confidence": {"forces_uncertainty": 1e-6, "energy_uncertainty": 1e-6}}
    with pytest.warns(UserWarning, match="3 of 3 relaxed structures lie outside the model's confidence"):
        results = relax_many([s.copy() for s in structures], NEMPCalculator(strict), steps=5, progress=False)
    assert all("force spread" in r.doubt and r.forces_uncertainty > 1e-6 for r in results)
    import warnings

    with warnings.catch_warnings():  # a caller that reports the doubts itself asks for no warning
        warnings.simplefilter("error")
        quiet = relax_many([s.copy() for s in structures], NEMPCalculator(strict), steps=5, progress=False, warn=False)
    assert [r.doubt for r in quiet] == [r.doubt for r in results]
    relaxed_ok = relax_many([s.copy() for s in structures], NEMPCalculator(committee), steps=5, progress=False)
    assert all(r.doubt is None and r.energy_uncertainty is not None for r in relaxed_ok)

    save(strict, tmp_path / "strict.pt", confidence=strict.metadata["confidence"])
    write(tmp_path / "in.extxyz", structures)
    assert main(["relax", str(tmp_path / "in.extxyz"), "--model", str(tmp_path / "strict.pt"), "--steps", "5",
                 "--output", str(tmp_path / "out.extxyz"), "--quiet"]) == 4
    err = capsys.readouterr().err
    assert "structure 2: outside the model's confidence (force spread" in err and "WARNING: 3 of 3" in err
    assert all(a.info["outside_confidence"] and "force spread" in a.info["doubt"]
               for a in read(tmp_path / "out.extxyz", ":"))

    # an unknown extension or a one-structure format: refused before any relaxation
    for name, match in (("out.foo", "cannot tell a format"), ("POSCAR", "one structure per file")):
        assert main(["relax", str(tmp_path / "in.extxyz"), "--model", str(tmp_path / "strict.pt"),
                     "--output", str(tmp_path / name), "--quiet"]) == 2
        assert match in capsys.readouterr().err and not (tmp_path / name).exists()

    # Ctrl-C after the structures with few atoms converged: all are written, flagged
    save(committee, tmp_path / "c.pt", confidence=committee.metadata["confidence"])
    original = NEMPCalculator.calculate_batch
    state = {"calls": 0}

    def interrupting(self, images, *args, **kwargs):
        state["calls"] += 1
        if state["calls"] == 3:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(NEMPCalculator, "calculate_batch", interrupting)
    assert main(["relax", str(tmp_path / "in.extxyz"), "--model", str(tmp_path / "c.pt"), "--steps", "200",
                 "--output", str(tmp_path / "stopped.extxyz"), "--quiet"]) == 130
    assert "stopped by signal 2 after 3 batched steps" in capsys.readouterr().err
    stopped = read(tmp_path / "stopped.extxyz", ":")
    assert len(stopped) == 3 and all(a.info["relax_steps"] == 3 for a in stopped if not a.info["converged"])
    assert all(a.info["interrupted"] != a.info["converged"] for a in stopped)


def test_relax_many_observer_sees_every_evaluation_and_can_stop_one_structure(model):
    from ase_nemp.neb import StopExploration

    structures = [random_molecule(n=n, seed=n, symbols="HCO", min_dist=1.0) for n in (3, 4, 5)]
    seen = []

    def observer(k, atoms, step):
        assert not atoms.calc.calculation_required(atoms, ["energy", "forces"])  # results are current
        seen.append((k, step))
        if k == 1 and step == 2:
            raise StopExploration("structure 1 left the data")

    with pytest.warns(UserWarning) if hasattr(model, "members") else nullcontext():
        results = relax_many(structures, NEMPCalculator(model), fmax=1e-4, steps=6, progress=False, observer=observer)
    assert results[1].stopped == "structure 1 left the data" and not results[1].converged and results[1].steps == 2
    assert [r.stopped for r in (results[0], results[2])] == [None, None]
    assert [s for k, s in seen if k == 0] == list(range(7)) and max(s for k, s in seen if k == 1) == 2


@pytest.mark.filterwarnings("ignore:.*outside the model's confidence")  # random committees disagree
def test_relax_many_on_workers_gives_the_lockstep_results(tmp_path, capsys, dask_executor, dask_cluster):
    """Jobs of two structures on a local pool and on Dask: the same steps, positions,
    energies and committee spreads as all structures in lockstep in this process."""
    from ase_nemp.jobs import open_executor

    committee = Committee([random_model(CONFIG, seed=s) for s in (1, 2, 3)])
    structures = mixed_structures()[1:] + [random_molecule(n=n, seed=n, symbols="HCO", min_dist=1.0) for n in (4, 6)]
    here = [s.copy() for s in structures]
    expected = relax_many(here, NEMPCalculator(committee), fmax=0.05, steps=60, progress=False)
    with open_executor("processes:2") as pool:
        for executor in (pool, dask_executor):
            there = [s.copy() for s in structures]
            results = relax_many(there, NEMPCalculator(committee), fmax=0.05, steps=60, progress=False,
                                 executor=executor, per_job=2)
            for a, b, ra, rb in zip(here, there, expected, results):
                np.testing.assert_allclose(b.positions, a.positions, atol=1e-10)
                assert (rb.steps, rb.converged) == (ra.steps, ra.converged)
                assert rb.energy == pytest.approx(ra.energy, abs=1e-10)
                assert rb.forces_uncertainty == pytest.approx(ra.forces_uncertainty, abs=1e-10)
                np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-10)  # the results came back
    assert len({r.steps for r in expected}) > 1
    with pytest.raises(ValueError, match="observer"):
        relax_many([s.copy() for s in structures], NEMPCalculator(committee), executor=dask_executor,
                   observer=lambda *a: None)

    save(committee, tmp_path / "c.pt")
    write(tmp_path / "in.extxyz", structures)
    for name, scheduler in (("serial", "serial"), ("pool", "processes:2"), ("dask", dask_cluster.scheduler_address)):
        assert main(["relax", str(tmp_path / "in.extxyz"), "--model", str(tmp_path / "c.pt"), "--steps", "60",
                     "--output", str(tmp_path / f"{name}.extxyz"), "--quiet", "--scheduler", scheduler,
                     "--per-job", "3"]) in (0, 3, 4)
    assert dask_cluster.scheduler_address.startswith("tcp://")  # --scheduler tcp://HOST:PORT, as on a cluster
    for other in ("pool", "dask"):
        for a, b in zip(read(tmp_path / "serial.extxyz", ":"), read(tmp_path / f"{other}.extxyz", ":")):
            np.testing.assert_allclose(b.positions, a.positions, atol=1e-10)
            assert a.info["relax_steps"] == b.info["relax_steps"]
    assert main(["relax", str(tmp_path / "in.extxyz"), "--model", str(tmp_path / "c.pt"),
                 "--output", str(tmp_path / "x.extxyz"), "--scheduler", "threads"]) == 2
    assert "unknown scheduler 'threads'" in capsys.readouterr().err
    # an element the model lacks, found on a worker: the serial path's clear error, not a traceback
    from ase import Atoms

    write(tmp_path / "gold.extxyz", structures[:1] + [Atoms("Au2", positions=[[0, 0, 0], [2.6, 0, 0]])])
    assert main(["relax", str(tmp_path / "gold.extxyz"), "--model", str(tmp_path / "c.pt"), "--quiet",
                 "--output", str(tmp_path / "g.extxyz"), "--scheduler", "processes:2", "--per-job", "1"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 relaxation jobs failed (structures 1-1: ValueError" in err and "Au" in err
    assert "Traceback" not in err and not (tmp_path / "g.extxyz").exists()
