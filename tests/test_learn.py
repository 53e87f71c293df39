"""Active learning end to end: a tiny committee, ASE's EMT as the teacher, Cu13 clusters."""

import json
import textwrap

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from ase.io import read, write
from ase.md.langevin import Langevin

from ase_nemp import load
from ase_nemp.cli import main
from ase_nemp.learn import LearnConfig, LearningInterrupted, learn
from ase_nemp.learn.select import largest_displacement, select
from ase_nemp.train import RunConfig, train

TINY = dict(cutoff=4.0, num_channels=4, num_layers=1, pair_dim=8, pair_mlp=[1, 8], edge_mlp=[1, 8],
            coeff_mlp=[1, 8], readout_mlp=[1, 8])
TRAINING = dict(batch_size=2, dtype="float64", lr_warm=0.005, lr_peak=0.02, lr_min=0.001, warmup_epochs=2,
                lr_schedule="cosine", ema_decay=0.9, threads=1)


def emt_labelled(atoms):
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Cu13 near its minimum (training data), a 1200 K EMT trajectory (held out), and a
    tiny committee trained on the former."""
    root = tmp_path_factory.mktemp("learn")
    rng = np.random.default_rng(0)
    base = Icosahedron("Cu", 2)
    base.center(vacuum=5.0)
    base.pbc = False
    frames = []
    for _ in range(8):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, 0.04, atoms.positions.shape)
        frames.append(emt_labelled(atoms))
    write(root / "train.extxyz", frames)
    write(root / "start.extxyz", base)
    hot = base.copy()
    hot.calc = EMT()
    hot.set_momenta(np.random.default_rng(1).normal(0.0, 1.0, (13, 3)) * np.sqrt(hot.get_masses()[:, None] * 1200 * units.kB))
    dyn = Langevin(hot, 2 * units.fs, temperature_K=1200, friction=0.02 / units.fs, fixcm=False,
                   rng=np.random.default_rng(2))
    held = []
    dyn.attach(lambda: held.append(emt_labelled(hot)), interval=10)
    dyn.run(150)
    write(root / "heldout.extxyz", held)
    run = RunConfig.from_dict({"data": {"train": str(root / "train.extxyz"), "valid_fraction": 0.25},
                               "model": TINY, "training": {**TRAINING, "committee": 2, "epochs": 15},
                               "output": {"dir": str(root / "committee")}})
    train(run, progress=False)
    (root / "teacher.py").write_text(textwrap.dedent('''
        import os, signal
        from ase.calculators.emt import EMT

        class InterruptingEMT(EMT):
            """EMT that sends this process SIGTERM after `after` calculations (once per file)."""
            def __init__(self, after=0, flag=None):
                super().__init__()
                self.after, self.flag, self.calls = after, flag, 0
            def calculate(self, *args, **kwargs):
                super().calculate(*args, **kwargs)
                self.calls += 1
                if self.after and self.calls == self.after and self.flag and not os.path.exists(self.flag):
                    open(self.flag, "w").close()
                    signal.raise_signal(signal.SIGTERM)

        class FailingEMT(EMT):
            """EMT that raises after its first calculation (the check before exploring passes)."""
            calls = 0
            def calculate(self, *args, **kwargs):
                FailingEMT.calls += 1
                if FailingEMT.calls > 1:
                    raise RuntimeError("SCF did not converge")
                super().calculate(*args, **kwargs)

        class DyingEMT(EMT):
            """EMT whose process dies at its second calculation (once per flag file)."""
            def __init__(self, flag=None):
                super().__init__()
                self.flag, self.calls = flag, 0
            def calculate(self, *args, **kwargs):
                self.calls += 1
                if self.calls == 2 and self.flag and not os.path.exists(self.flag):
                    open(self.flag, "w").close()
                    os._exit(1)
                super().calculate(*args, **kwargs)

        class WrongShapeEMT(EMT):
            def calculate(self, *args, **kwargs):
                super().calculate(*args, **kwargs)
                self.results["forces"] = self.results["forces"][:-1]
    '''))
    return root


def learn_config(root, out, rounds=2, after=0):
    return LearnConfig.from_dict({
        "data": {"train": "train.extxyz", "valid_fraction": 0.25},
        "start": "committee/best.pt",
        "teacher": {"calculator": "teacher.py:InterruptingEMT",
                    "kwargs": {"after": after, "flag": str(root / f"{out}.flag")}},
        "explore": [{"kind": "md", "structures": "start.extxyz", "temperatures": [1200], "steps": 120,
                     "timestep": 2.0, "interval": 4}],
        "select": {"threshold": 0.05, "max_per_round": 6, "min_distance": 0.1},
        "rounds": rounds,
        "finetune": {**TRAINING, "epochs": 10, "warmup_epochs": 0, "lr_peak": 0.01},
        "monitor": "heldout.extxyz",
        "output": {"dir": out},
    }, base_dir=root)


def test_the_loop_lowers_the_error_against_the_teacher_and_survives_sigterm(workspace):
    root = workspace
    cfg = learn_config(root, "run", rounds=2, after=4)
    with pytest.raises(LearningInterrupted, match="all labelled frames are in"):
        learn(cfg, progress=False)  # SIGTERM after the teacher's check and its third frame of round 1
    state = json.loads((root / "run" / "state.json").read_text())
    assert state["phase"] == "label" and state["teacher_calls"] == 3
    on_disk = [a for a in read(root / "run/data/train.extxyz", ":") + read(root / "run/data/valid.extxyz", ":")
               if "al_round" in a.info]
    assert len(on_disk) == 3  # nothing the teacher computed was lost
    with pytest.raises(FileExistsError, match="--resume"):
        learn(cfg, progress=False)

    rows = learn(cfg, resume=True, progress=False)
    labelled = [a for a in read(root / "run/data/train.extxyz", ":") + read(root / "run/data/valid.extxyz", ":")
                if "al_round" in a.info]
    # every teacher call is one labelled frame: none repeated after the resume, none lost
    assert len(labelled) == rows[-1]["teacher_calls"] == sum(r.get("labelled", 0) for r in rows)
    keys = [(a.info["al_round"], a.info["al_candidate"]) for a in labelled]
    assert len(set(keys)) == len(keys)
    assert rows[-1]["teacher_seconds"] == pytest.approx(sum(a.info["al_teacher_seconds"] for a in labelled), abs=0.2)
    for a in labelled:
        assert a.info["al_teacher"] == "InterruptingEMT" and a.info["config_type"] == "al_md"
        assert a.info["al_source"].startswith("md:start.extxyz#0:1200K:step")
        np.testing.assert_allclose(a.get_forces(), emt_labelled(a).get_forces(), atol=1e-6)  # the teacher's labels
    # the committee's error against the teacher on the held-out trajectory goes down
    first, last = rows[0], rows[-1]
    assert last["round"] == 3 and last["note"] == "final check"
    assert last["monitor_f_rmse"] < 0.7 * first["monitor_f_rmse"]
    assert last["monitor_e_rmse_atom"] < first["monitor_e_rmse_atom"]
    assert all(r.get("max_uncertainty", 1.0) > 0 for r in rows[1:])
    committee = load(root / "run" / "committee.pt")
    assert committee.size == 2
    assert committee.metadata["confidence"] == {"forces_uncertainty": 0.05}
    assert committee.metadata["active_learning"]["teacher_calls"] == last["teacher_calls"]
    for name in ("learn_log.csv", "learn_log.md", "learning.png", "round-1/explore.json", "round-1/candidates.extxyz"):
        assert (root / "run" / name).exists(), name


def test_selection_takes_the_most_uncertain_and_skips_near_duplicates():
    from types import SimpleNamespace

    base = Icosahedron("Cu", 2)
    moved = [base.copy() for _ in range(4)]
    moved[1].positions[0] += [0.05, 0, 0]  # within 0.1 Å of moved[0]
    moved[2].positions[0] += [0.3, 0, 0]
    moved[3].positions[3] += [0.0, 0.5, 0]
    cands = [SimpleNamespace(atoms=a, uncertainty=u) for a, u in zip(moved, [0.9, 0.8, 0.5, 0.2])]
    chosen = select(cands, max_count=2, min_distance=0.1)
    assert [c.uncertainty for c in chosen] == [0.9, 0.5]
    assert [c.uncertainty for c in select(cands, max_count=5, min_distance=0.1, existing=[moved[2]])] == [0.9, 0.2]
    assert largest_displacement(moved[0], [moved[2], Icosahedron("Ag", 2)]).tolist() == [pytest.approx(0.3), np.inf]


def test_config_errors_name_the_problem(workspace, tmp_path):
    root = workspace
    good = {"data": {"train": "train.extxyz"}, "start": "committee/best.pt",
            "teacher": {"calculator": "ase.calculators.emt:EMT"},
            "explore": [{"kind": "md", "structures": "start.extxyz"}]}
    with pytest.raises(ValueError, match="kind must be one of"):
        LearnConfig.from_dict({**good, "explore": [{"kind": "dance"}]}, base_dir=root)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['temperature'\]"):
        LearnConfig.from_dict({**good, "explore": [{"kind": "md", "structures": "x", "temperature": 3}]}, base_dir=root)
    with pytest.raises(ValueError, match="needs a 'teacher'"):
        LearnConfig.from_dict({k: v for k, v in good.items() if k != "teacher"}, base_dir=root)
    with pytest.raises(ValueError, match="init_from"):
        LearnConfig.from_dict({**good, "finetune": {"init_from": "x.pt"}}, base_dir=root)
    with pytest.raises(ValueError, match="threshold"):
        LearnConfig.from_dict({**good, "select": {"threshold": -1}}, base_dir=root)
    for select, match in (({"stop_above": -1}, "stop_above"), ({"threshold": 0.2, "stop_above": 0.1}, "stop_above"),
                          ({"threshold": float("inf")}, "threshold"), ({"max_per_round": True}, "max_per_round")):
        with pytest.raises(ValueError, match=match):
            LearnConfig.from_dict({**good, "select": select}, base_dir=root)
    for entry, match in (({"steps": -5}, "steps must be a whole number >= 1"), ({"steps": 2.5}, "steps"),
                         ({"steps": True}, "steps"), ({"temperatures": [300, -1]}, "temperatures"),
                         ({"timestep": 0}, "timestep"), ({"interval": 0}, "interval"),
                         ({"temperatures": float("nan")}, "temperatures")):
        with pytest.raises(ValueError, match=match):
            LearnConfig.from_dict({**good, "explore": [{"kind": "md", "structures": "x", **entry}]}, base_dir=root)
    with pytest.raises(ValueError, match="fmax"):
        LearnConfig.from_dict({**good, "explore": [{"kind": "relax", "structures": "x", "fmax": float("inf")}]},
                              base_dir=root)
    cfg = LearnConfig.from_dict({**good, "teacher": {"calculator": "ase.calculators.emt:NoSuch"},
                                 "output": {"dir": str(tmp_path / "x")}}, base_dir=root)
    with pytest.raises(ValueError, match="NoSuch"):
        from ase_nemp.learn import load_teacher

        load_teacher(cfg.teacher.calculator)
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    assert main(["learn", str(tmp_path / "bad.yaml")]) == 2
    from ase_nemp.files import FolderLock
    from ase_nemp.learn import learn

    lock = FolderLock(tmp_path / "x")  # a loop already running there
    try:
        with pytest.raises(FileExistsError, match="in use by another run"):
            learn(cfg, progress=False)
    finally:
        lock.release()


def test_single_points_far_from_the_data_do_not_end_the_scan(tmp_path):
    """A scan is no trajectory: a frame above stop_above is a candidate, and the frames after it are still seen."""
    from ase import Atoms

    from ase_nemp import NEMPCalculator
    from ase_nemp.learn.config import Exploration
    from ase_nemp.learn.explore import explore
    from ase_nemp.model import Committee
    from ase_nemp.testing import random_model, tiny_config

    committee = Committee([random_model(tiny_config(species=(1, 8), cutoff=3.0), seed=s) for s in (1, 2)])
    scan = [Atoms("OH", positions=[[0, 0, 0], [0.7 + 0.2 * k, 0, 0]]) for k in range(5)]
    write(tmp_path / "scan.extxyz", scan)
    exploration = Exploration.from_dict({"kind": "structures", "structures": "scan.extxyz"}, 0,
                                        lambda p: str(tmp_path / p))
    report = explore(exploration, lambda: NEMPCalculator(committee), threshold=0.0, stop_above=1e-9)
    assert report.frames == 5 and len(report.candidates) == 5


def test_learn_never_overwrites_a_users_files(workspace, tmp_path):
    """output.dir '.' (or any folder with files of the run's names, or the run's own inputs)
    is refused before anything is written."""
    import shutil

    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("train.extxyz", "start.extxyz", "heldout.extxyz", "teacher.py"):
        shutil.copy(workspace / name, folder / name)
    shutil.copytree(workspace / "committee", folder / "committee")
    (folder / "config.yaml").write_text("my own settings\n")
    (folder / "learn_log.md").write_text("my notes\n")
    cfg = learn_config(folder, ".", rounds=1)
    with pytest.raises(FileExistsError, match="not free for a new run: it already holds config.yaml, learn_log.md"):
        learn(cfg, progress=False)
    assert (folder / "config.yaml").read_text() == "my own settings\n"
    assert not (folder / "data").exists() and not (folder / "state.json").exists()
    (folder / "config.yaml").unlink()
    (folder / "learn_log.md").unlink()
    with pytest.raises(FileExistsError, match="the run's own inputs live there"):
        learn(cfg, progress=False)  # train.extxyz and heldout.extxyz sit in output.dir


def test_a_broken_teacher_is_found_before_exploring_and_can_be_corrected(workspace, tmp_path):
    import time

    from ase_nemp.learn.loop import TeacherFailed

    cfg = learn_config(workspace, str(tmp_path / "typo"), rounds=1)
    raw = {**cfg.to_dict(), "teacher": {"calculator": str(workspace / "teacher.py") + ":InteruptingEMT"}}
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="has no 'InteruptingEMT'"):
        learn(LearnConfig.from_dict(raw), progress=False)
    assert time.perf_counter() - t0 < 5  # no exploration
    assert not any((tmp_path / "typo" / name).exists() for name in ("state.json", "data", "config.yaml"))
    learn(cfg, progress=False)  # the corrected config starts afresh in the same folder

    # a teacher that fails on every frame of a round: the loop stops, the committee is not
    # fine-tuned, the exit code says so; a resume with another teacher labels the round
    failing = LearnConfig.from_dict({**cfg.to_dict(), "output": {"dir": str(tmp_path / "fail")},
                                     "teacher": {"calculator": str(workspace / "teacher.py") + ":FailingEMT"}})
    with pytest.raises(TeacherFailed, match=r"failed on all \d+ frames of round 1 .*SCF did not converge") as err:
        learn(failing, progress=False)
    failed = int(str(err.value).split("all ")[1].split()[0])
    state = json.loads((tmp_path / "fail" / "state.json").read_text())
    assert state["phase"] == "label" and state["teacher_failures"] == failed > 0
    assert not (tmp_path / "fail" / "round-1" / "train").exists()
    fixed = LearnConfig.from_dict({**failing.to_dict(), "teacher": {"calculator": "ase.calculators.emt:EMT"}})
    rows = learn(fixed, resume=True, progress=False)
    assert rows[1]["labelled"] == failed and (tmp_path / "fail" / "round-1" / "train").exists()
    with pytest.raises(ValueError, match="section"):  # other sections still may not change on resume
        learn(LearnConfig.from_dict({**fixed.to_dict(), "select": {"threshold": 0.5}}), resume=True, progress=False)


def test_teacher_results_of_the_wrong_shape_and_rounds_true_are_refused(workspace):
    from ase_nemp.learn import label, load_teacher

    teacher = load_teacher(str(workspace / "teacher.py") + ":WrongShapeEMT")
    atoms = read(workspace / "start.extxyz")
    with pytest.raises(ValueError, match=r"forces of shape \(12, 3\) for 13 atoms"):
        label(atoms, teacher)
    with pytest.raises(ValueError, match="rounds must be a whole number"):
        LearnConfig.from_dict({**learn_config(workspace, "x").to_dict(), "rounds": True})


def test_labels_from_dask_workers_make_the_serial_run_s_data_set(workspace, tmp_path, dask_executor):
    """The teacher on 2 Dask worker processes, one of which dies in the middle: the same
    frames in the same order with the same labels as the teacher in this process."""
    serial = learn_config(workspace, str(tmp_path / "serial"), rounds=1)
    learn(serial, progress=False)
    raw = serial.to_dict()
    raw["output"] = {"dir": str(tmp_path / "dask")}
    raw["teacher"] = {"calculator": str(workspace / "teacher.py") + ":DyingEMT",
                      "kwargs": {"flag": str(tmp_path / "died")}}
    rows = learn(LearnConfig.from_dict(raw), progress=False, scheduler=dask_executor)
    assert (tmp_path / "died").exists()  # a worker did die
    for name in ("train", "valid"):
        a = read(tmp_path / "serial" / "data" / f"{name}.extxyz", ":")
        b = read(tmp_path / "dask" / "data" / f"{name}.extxyz", ":")
        assert [x.info.get("al_candidate") for x in a] == [x.info.get("al_candidate") for x in b]
        assert sum("al_round" in x.info for x in b) > 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.positions, y.positions)
            np.testing.assert_array_equal(x.get_forces(), y.get_forces())
            assert x.get_potential_energy() == y.get_potential_energy()
    assert rows[1]["labelled"] == len(read(tmp_path / "dask" / "round-1" / "candidates.extxyz", ":"))
    assert json.loads((tmp_path / "dask" / "state.json").read_text())["teacher_failures"] == 0
