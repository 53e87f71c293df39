"""Training and evaluation on a tiny synthetic data set (EMT labels)."""

import dataclasses
import math
import signal

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from ase_nemp import load
from ase_nemp.cli import main
from ase_nemp.train import RunConfig, TrainingInterrupted, evaluate, fit_atomic_energies
from ase_nemp.train.config import TrainConfig
from ase_nemp.train.trainer import Trainer
from ase_nemp.testing import evaluate as evaluate_model
from ase_nemp.testing import random_crystal

from .conftest import TINY_MODEL, labelled, run_config, trained

def test_two_epochs_lower_the_loss_and_write_outputs(data_file, tmp_path):
    trainer = trained(run_config(data_file, tmp_path / "run", epochs=4))
    history = trainer.state["history"]
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    for name in ("best.pt", "checkpoint.pt", "metrics.csv", "learning_curve.png", "config.yaml"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 5
    best = load(tmp_path / "run" / "best.pt")
    assert best.metadata["num_train"] == 9 and best.metadata["num_valid"] == 3


TINY_EQUIREANN = dict(architecture="equireann", cutoff=3.5, num_radial=4, num_orbitals=6, iter_mlp=[8],
                      readout_mlp=[8, 8], neigh_scale=2.0)


def test_equireann_trains_resumes_and_evaluates(data_file, tmp_path, capsys):
    from ase_nemp.model import EquiREANN

    def config(epochs):
        return RunConfig.from_dict({"data": {"train": str(data_file), "valid_fraction": 0.25}, "model": TINY_EQUIREANN,
                                    "training": dict(epochs=epochs, batch_size=3, dtype="float64", seed=1,
                                                     lr_peak=5e-3, warmup_epochs=0, ema_decay=0.5),
                                    "output": {"dir": str(tmp_path / "eq")}})

    straight = trained(RunConfig.from_dict({**config(4).to_dict(), "output": {"dir": str(tmp_path / "eq4")}}))
    history = straight.state["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    trained(config(2))
    resumed = trained(config(4), resume=True)  # the checkpoint records the architecture
    assert isinstance(resumed.model, EquiREANN)
    assert all(torch.equal(p, q) for p, q in zip(straight.model.parameters(), resumed.model.parameters()))
    best = load(tmp_path / "eq" / "best.pt")
    assert isinstance(best, EquiREANN) and best.config.num_orbitals == 6
    assert main(["eval", str(tmp_path / "eq" / "best.pt"), str(data_file)]) == 0
    assert "F RMSE (meV/Å)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="for architecture 'equireann'.*num_orbitals"):
        trained(RunConfig.from_dict({**config(1).to_dict(), "model": {**TINY_EQUIREANN, "num_channels": 4},
                                     "output": {"dir": str(tmp_path / "bad")}}))


@pytest.mark.parametrize("force_mode", ["direct", "conservative"])
def test_leignn_trains_in_both_force_modes(force_mode, data_file, tmp_path, capsys):
    from ase_nemp.model import LEIGNN

    run = RunConfig.from_dict({
        "data": {"train": str(data_file), "valid_fraction": 0.25},
        "model": dict(architecture="leignn", force_mode=force_mode, cutoff=3.5, num_channels=8, num_layers=2,
                      num_radial=8),
        "training": dict(epochs=4, batch_size=3, dtype="float64", seed=1, lr_peak=5e-3, warmup_epochs=0,
                         ema_decay=0.5),
        "output": {"dir": str(tmp_path / force_mode)}})
    history = trained(run).state["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    best = load(tmp_path / force_mode / "best.pt")
    assert isinstance(best, LEIGNN) and best.conservative == (force_mode == "conservative")
    assert main(["eval", str(tmp_path / force_mode / "best.pt"), str(data_file)]) == 0
    assert "F RMSE (meV/Å)" in capsys.readouterr().out


def state_of(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()} | {
        f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict().items()}


def test_resume_continues_exactly(data_file, tmp_path):
    straight = trained(run_config(data_file, tmp_path / "straight", epochs=4))
    first = trained(run_config(data_file, tmp_path / "split", epochs=2))
    assert first.state["epoch"] == 2
    resumed = trained(run_config(data_file, tmp_path / "split", epochs=4), resume=True)
    a, b = state_of(straight), state_of(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in straight.state["history"]] == [r["val_loss"] for r in resumed.state["history"]]
    # metrics.csv: written whole after the resume, appended to after that; the same rows
    def rows(run):
        lines = (tmp_path / run / "metrics.csv").read_text().splitlines()
        return [line.rsplit(",", 1)[0] for line in lines]  # less the elapsed_s column

    assert rows("split") == rows("straight") and len(rows("split")) == 5


def test_valid_every_skips_validation_but_not_training(data_file, tmp_path):
    """valid_every=2 validates epochs 1 and 3, and the last one (4); the training itself,
    and the validations it does, are those of a run that validates every epoch."""
    every = trained(run_config(data_file, tmp_path / "every", epochs=5))
    sparse = trained(run_config(data_file, tmp_path / "sparse", epochs=5, valid_every=2))
    a, b = state_of(every), state_of(sparse)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = sparse.state["history"]
    assert [r["epoch"] for r in rows if math.isfinite(r["val_loss"])] == [1, 3, 4]
    for r, ref in zip(rows, every.state["history"]):
        assert r["train_loss"] == ref["train_loss"]
        if math.isfinite(r["val_loss"]):
            assert r["val_loss"] == ref["val_loss"] and r["val_f_rmse"] == ref["val_f_rmse"]
        else:
            assert math.isnan(r["val_f_rmse"])
    assert sparse.state["best_epoch"] in (1, 3, 4)
    assert (tmp_path / "sparse" / "metrics.csv").read_text().count("nan") == 2 * 5  # 5 validation columns, 2 rows
    # a timed run validates its last epoch whatever valid_every says
    timed = trained(run_config(data_file, tmp_path / "timed", epochs=50, valid_every=10, max_time=1e-9))
    assert len(timed.state["history"]) == 1 and math.isfinite(timed.state["history"][0]["val_loss"])


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_valid_every_must_be_a_positive_whole_number(value):
    with pytest.raises(ValueError, match="valid_every"):
        TrainConfig(valid_every=value)


def test_sharded_batches_give_the_same_training(data_file, tmp_path):
    """workers=2 computes each batch as two concurrent shards: same steps up to rounding,
    and bitwise reproducible from run to run."""
    whole = trained(run_config(data_file, tmp_path / "one", epochs=3))
    before = torch.get_num_threads()
    try:
        shard = [trained(run_config(data_file, tmp_path / f"two{k}", epochs=3, workers=2, threads=1)) for k in range(2)]
    finally:
        torch.set_num_threads(before)
    for p, q, r in zip(whole.model.parameters(), shard[0].model.parameters(), shard[1].model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-11)
        assert torch.equal(q, r)
    assert abs(shard[0].state["history"][-1]["val_loss"] - whole.state["history"][-1]["val_loss"]) < 1e-9


def test_interrupt_writes_a_checkpoint_and_resumes_exactly(data_file, tmp_path, monkeypatch):
    straight = trained(run_config(data_file, tmp_path / "straight", epochs=3))
    run = run_config(data_file, tmp_path / "interrupted", epochs=3)
    trainer = Trainer(run, progress=False)
    trainer.setup()
    calls = {"n": 0}
    original = trainer.optimizer.step

    def step_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        result = original(*args, **kwargs)
        if calls["n"] == 4:  # in the middle of the second epoch
            signal.raise_signal(signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer.optimizer, "step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted, match="checkpoint written"):
        trainer.fit()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    ckpt = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["step_in_epoch"] == 1
    resumed = trained(run, resume=True)
    a, b = state_of(straight), state_of(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the interrupted epoch's training loss counts the steps before the interruption too
    assert [r["train_loss"] for r in resumed.state["history"]] == pytest.approx(
        [r["train_loss"] for r in straight.state["history"]], rel=1e-12)


def test_resume_refuses_edited_data_and_corrupt_checkpoints(tmp_path):
    data = tmp_path / "train.extxyz"
    write(data, labelled(12, seed=100))
    trained(run_config(data, tmp_path / "run", epochs=1))
    write(data, labelled(12, seed=200))  # edited in place, same name
    with pytest.raises(ValueError, match="data.train .* changed"):
        Trainer(run_config(data, tmp_path / "run", epochs=2), progress=False).setup(resume=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt or empty"):
        Trainer(run_config(data, tmp_path / "run", epochs=2), progress=False).setup(resume=True)


def test_settings_that_would_train_on_nothing_are_refused(data_file, tmp_path):
    with pytest.raises(ValueError, match="no training structures"):
        Trainer(RunConfig.from_dict({"data": {"train": str(data_file), "valid_fraction": 0.99}, "model": TINY_MODEL,
                                     "output": {"dir": str(tmp_path / "x")}}), progress=False).setup()
    for key, value in (("threads", 0), ("epochs", 0), ("committee", 0)):
        with pytest.raises(ValueError, match=key):
            run_config(data_file, tmp_path / "y", **{key: value})


def test_validation_loss_uses_fixed_weights_and_threads_are_restored(data_file, tmp_path):
    before = torch.get_num_threads()
    trainer = trained(run_config(data_file, tmp_path / "run", epochs=1, threads=1))
    assert torch.get_num_threads() == before  # the caller's setting survives training
    loss, _ = trainer.validate()
    trainer.state["force_weight"] = 0.1  # the scheduled weight changes the training loss only
    assert trainer.validate()[0] == loss


def test_existing_run_is_not_overwritten(data_file, tmp_path):
    trained(run_config(data_file, tmp_path / "run", epochs=1))
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(run_config(data_file, tmp_path / "run", epochs=1), progress=False).setup()
    changed = run_config(data_file, tmp_path / "run", epochs=1, lr_peak=1e-2)
    with pytest.raises(ValueError, match="lr_peak"):
        Trainer(changed, progress=False).setup(resume=True)


def test_results_and_user_files_without_a_checkpoint_are_not_overwritten(data_file, tmp_path):
    """A folder holding best.pt and metrics.csv but no checkpoint, or the user's own
    config.yaml (output.dir: .), was once overwritten without a word."""
    run_dir = tmp_path / "results"
    run_dir.mkdir()
    for name in ("best.pt", "metrics.csv"):
        (run_dir / name).write_text("precious")
    with pytest.raises(FileExistsError, match="best.pt, metrics.csv"):
        Trainer(run_config(data_file, run_dir, epochs=1), progress=False).setup()
    here = tmp_path / "here"
    here.mkdir()
    (here / "config.yaml").write_text("my own notes\n")
    with pytest.raises(FileExistsError, match="config.yaml"):
        trained(run_config(data_file, here, epochs=1))
    assert (here / "config.yaml").read_text() == "my own notes\n"
    assert all((run_dir / name).read_text() == "precious" for name in ("best.pt", "metrics.csv"))


def test_a_second_run_in_the_same_folder_is_refused(data_file, tmp_path):
    from ase_nemp.files import FolderLock

    lock = FolderLock(tmp_path / "busy")  # as held by a run in another process
    try:
        with pytest.raises(FileExistsError, match="in use by another run"):
            Trainer(run_config(data_file, tmp_path / "busy", epochs=1), progress=False).setup()
        assert not (tmp_path / "busy" / "config.yaml").exists()
    finally:
        lock.release()
    trained(run_config(data_file, tmp_path / "busy", epochs=1))  # free again once released
    assert (tmp_path / "busy" / "best.pt").exists()


def test_missing_forces_are_reported(tmp_path):
    frames = labelled(4, seed=5)
    frames[2] = Atoms(frames[2].symbols, positions=frames[2].positions, info={"energy": -1.0, "config_type": "x"})
    path = tmp_path / "bad.extxyz"
    write(path, frames)
    run = run_config(path, tmp_path / "run")
    with pytest.raises(ValueError, match=r"structure 2 .* no forces label .*'forces'.*it has: .*energy"):
        Trainer(run, progress=False).setup()


def test_fit_atomic_energies_recovers_constants():
    rng = np.random.default_rng(0)
    species = [1, 6, 8]
    truth = np.array([-13.6, -1026.9, -2037.8])
    numbers = [rng.choice(species, size=rng.integers(3, 12)) for _ in range(40)]
    energies = [sum(truth[species.index(z)] for z in n) + rng.normal(0, 1e-6) for n in numbers]
    np.testing.assert_allclose(fit_atomic_energies(numbers, energies, species), truth, atol=1e-5)


def test_isolated_atoms_set_the_reference_energies(data_file, tmp_path):
    iso = [Atoms(s, info={"energy": e}) for s, e in (("C", -7.5), ("O", -4.25))]
    write(tmp_path / "iso.extxyz", iso)
    raw = run_config(data_file, tmp_path / "run", epochs=1).to_dict()
    raw["data"]["isolated_atoms"] = str(tmp_path / "iso.extxyz")
    trainer = trained(RunConfig.from_dict(raw))
    assert trainer.model.atomic_energies.tolist() == [-7.5, -4.25]


def test_eval_matches_a_direct_calculation(data_file, tmp_path, capsys):
    trained(run_config(data_file, tmp_path / "run", epochs=1))
    model_path = tmp_path / "run" / "best.pt"
    assert main(["eval", str(model_path), str(data_file), "--plot", str(tmp_path / "parity.png")]) == 0
    printed = capsys.readouterr().out
    from ase.io import read

    frames = read(data_file, index=":")
    model = load(model_path)
    de, df = [], []
    for atoms in frames:
        out = evaluate_model(model, atoms)
        de.append((out["energy"] - atoms.get_potential_energy()) / len(atoms))
        df.append(out["forces"] - atoms.get_forces())
    e_rmse = np.sqrt(np.mean(np.square(de)))
    f_rmse = np.sqrt(np.mean(np.square(np.concatenate(df))))
    row = next(line for line in printed.splitlines() if line.startswith("| all"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[1]) == 12
    assert float(cells[2]) == pytest.approx(1e3 * e_rmse, abs=1e-3)
    assert float(cells[6]) == pytest.approx(1e3 * f_rmse, abs=1e-2)
    assert "| even | 6 |" in printed and "| odd | 6 |" in printed
    assert (tmp_path / "parity.png").stat().st_size > 1000
    before = (tmp_path / "parity.png").read_bytes()
    assert main(["eval", str(model_path), str(data_file), "--plot", str(tmp_path / "parity.png")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "parity.png").read_bytes() == before
    summary = evaluate(model_path, frames)
    assert summary["all"]["f_rmse"] == pytest.approx(f_rmse, rel=1e-9)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\] in section 'training'"):
        RunConfig.from_dict({"data": {"train": "x.xyz"}, "training": {"lr": 0.1}})
    with pytest.raises(ValueError, match="needs a 'data' section"):
        RunConfig.from_dict({"model": {}})
    (tmp_path / "c.yaml").write_text("data:\n  train: t.xyz\nmodel:\n  preset: emlp\n")
    run = RunConfig.from_yaml(tmp_path / "c.yaml")
    assert run.data.train == str((tmp_path / "t.xyz").resolve())


def test_yaml_numbers_and_types(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as text: it is taken as the number it means; a wrong
    type is a ValueError naming the key, not a TypeError deep in the trainer."""
    (tmp_path / "c.yaml").write_text("data: {train: t.xyz}\ntraining: {lr_peak: 1e-3, lr_min: 1e-5, epochs: 3.0}\n")
    run = RunConfig.from_yaml(tmp_path / "c.yaml")
    assert run.training.lr_peak == 1e-3 and run.training.lr_min == 1e-5 and run.training.epochs == 3
    for training, match in (({"lr_peak": "fast"}, "training.lr_peak must be a number"),
                            ({"epochs": 2.5}, "training.epochs must be a whole number"),
                            ({"batch_size": True}, "training.batch_size must be a whole number"),
                            ({"device": "gpu7"}, "unknown device 'gpu7'")):
        with pytest.raises(ValueError, match=match):
            RunConfig.from_dict({"data": {"train": "x.xyz"}, "training": training})
    (tmp_path / "bad.yaml").write_text("data: {train: [\n")
    with pytest.raises(ValueError, match="not valid YAML.*line 2"):
        RunConfig.from_yaml(tmp_path / "bad.yaml")


@pytest.mark.parametrize("argv,match", [
    (["train", "{empty}"], "is empty"),
    (["train", "{model:nonsense: 1}"], r"unknown key\(s\) \['nonsense'\] in section 'model'"),
    (["train", "{model:cutoff: three}"], "model.cutoff must be a number"),
    (["train", "{model:species: [C]}"], "lacks element\\(s\\) O found in the data"),
    (["eval", "{model}", "{empty_data}"], "is empty"),
    (["eval", "{model}", "{data}", "--plot", "{nowhere}/p.png"], "cannot write to the folder"),
    (["eval", "{model}", "{data}", "--device", "cuda:7"], "device 'cuda:7'"),
])
def test_command_line_mistakes_get_one_line(argv, match, data_file, tmp_path, capsys):
    """Each of these once ended in a traceback (or, for --plot, failed after the evaluation)."""
    from ase_nemp.testing import random_model, tiny_config
    from ase_nemp.io import save

    (tmp_path / "empty.extxyz").write_text("")
    (tmp_path / "nowhere").write_text("a file, not a folder")
    save(random_model(tiny_config(species=["C", "O"]), seed=0), tmp_path / "m.pt")

    def config(text):
        if text == "{empty}":
            body = f"data: {{train: {tmp_path / 'empty.extxyz'}}}\n"
        else:
            body = f"data: {{train: {data_file}}}\nmodel: {{cutoff: 3.5, {text[7:-1]}}}\n"
        (tmp_path / "c.yaml").write_text(body + f"output: {{dir: {tmp_path / 'out'}}}\n")
        return str(tmp_path / "c.yaml")

    names = {"{model}": str(tmp_path / "m.pt"), "{data}": str(data_file),
             "{empty_data}": str(tmp_path / "empty.extxyz")}
    args = [config(a) if a.startswith("{empty}") or a.startswith("{model:") else names.get(a, a) for a in argv]
    args = [a.replace("{nowhere}", str(tmp_path / "nowhere")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert __import__("re").search(match, err.splitlines()[-1]), err  # after any progress bar: one line


def test_learning_rate_and_force_weight_schedules(data_file, tmp_path):
    run = run_config(data_file, tmp_path / "run", epochs=40, lr_warm=1e-3, lr_peak=1e-2, lr_min=1e-4,
                     warmup_epochs=4, plateau_patience=3, plateau_factor=0.5, force_weight=10.0,
                     force_weight_final=0.1)
    trainer = Trainer(run, progress=False)
    trainer.state = {"plateau_scale": 1.0, "best_val": float("inf"), "bad_epochs": 0, "force_weight": 10.0,
                     "elapsed": 0.0}
    assert [trainer.learning_rate(k) for k in (0, 2, 4, 9)] == pytest.approx([1e-3, 5.5e-3, 1e-2, 1e-2])
    # plateau: improve once, then stall for `patience` epochs -> halve
    losses = [1.0, 2.0, 2.0, 2.0]
    for epoch, loss in enumerate(losses, start=10):
        lr = trainer.learning_rate(epoch)
        trainer._after_epoch_schedules(epoch, lr, loss)
        trainer.state["best_val"] = min(trainer.state["best_val"], loss)
    assert trainer.state["plateau_scale"] == 0.5
    assert trainer.learning_rate(20) == pytest.approx(5e-3)
    # the force weight follows the learning rate linearly between its end points
    frac = (1e-2 - 1e-4) / (1e-2 - 1e-4)
    assert trainer.state["force_weight"] == pytest.approx(0.1 + frac * 9.9)
    trainer._after_epoch_schedules(21, 5e-3, 3.0)
    assert trainer.state["force_weight"] == pytest.approx(0.1 + (5e-3 - 1e-4) / (1e-2 - 1e-4) * 9.9)

    cosine = Trainer(run_config(data_file, tmp_path / "cos", epochs=24, lr_schedule="cosine", lr_peak=1e-2,
                                lr_min=1e-4, warmup_epochs=4), progress=False)
    cosine.state = {"plateau_scale": 1.0, "elapsed": 0.0}
    lrs = [cosine.learning_rate(k) for k in range(4, 25)]
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_init_from_starts_at_the_file_parameters(data_file, tmp_path):
    first = trained(run_config(data_file, tmp_path / "stage1", epochs=2))
    best = first.out / "best.pt"
    stage2 = {"data": {"train": str(data_file), "valid_fraction": 0.25}, "output": {"dir": str(tmp_path / "stage2")},
              "training": dict(epochs=1, batch_size=3, dtype="float64", seed=1, init_from=str(best), energy_weight=50.0)}
    trainer = Trainer(RunConfig.from_dict(stage2), progress=False)
    trainer.setup()
    reference = load(best, dtype="float64")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name
    assert trainer.model.config == reference.config
    trainer.fit()
    assert not torch.equal(trainer.model.w_sp, reference.w_sp)  # it trained from there
    with pytest.raises(ValueError, match="leave the 'model' section out"):
        RunConfig.from_dict({**stage2, "model": TINY_MODEL})


# -- committees ----------------------------------------------------------------------------


def test_committee_training_saves_one_file_of_different_members(data_file, tmp_path, capsys):
    from ase_nemp.model import Committee
    from ase_nemp.train import train

    run = run_config(data_file, tmp_path / "committee", epochs=2, committee=3)
    result = train(run, progress=False)
    committee = load(result.best_path)
    assert isinstance(committee, Committee) and committee.size == 3
    for k in range(3):
        member = load(tmp_path / "committee" / f"member-{k}" / "best.pt")
        assert torch.equal(member.w_sp, committee.members[k].w_sp)
    assert not torch.equal(committee.members[0].w_sp, committee.members[1].w_sp)  # other seeds
    # one split for all members; seeds (initial parameters, data order) differ
    assert [t.seed for t in result.members] == [1, 2, 3]
    valid = [s.index for s in result.members[0].valid_set]
    assert all([s.index for s in t.valid_set] == valid for t in result.members)
    cal = committee.metadata["calibration"]
    assert cal["structures"] == 3 and -1.0 <= cal["energy_spearman"] <= 1.0
    assert (tmp_path / "committee" / "calibration.png").stat().st_size > 1000
    assert "Spearman" in (tmp_path / "committee" / "committee.md").read_text()

    # resuming a finished committee with the same budget trains nothing more
    histories = [len(t.state["history"]) for t in result.members]
    again = train(run, resume=True, progress=False)
    assert [len(t.state["history"]) for t in again.members] == histories
    with pytest.raises(FileExistsError, match="committee"):
        train(run, progress=False)

    # nemp eval on the committee file reports calibration
    assert main(["eval", str(result.best_path), str(data_file), "--plot", str(tmp_path / "p.png")]) == 0
    printed = capsys.readouterr().out
    assert "Spearman" in printed and (tmp_path / "p-calibration.png").exists()


def test_committee_fine_tuning_starts_each_member_from_its_own(data_file, tmp_path):
    from ase_nemp.train import train

    first = train(run_config(data_file, tmp_path / "c1", epochs=1, committee=2), progress=False)
    raw = {"data": {"train": str(data_file), "valid_fraction": 0.25}, "output": {"dir": str(tmp_path / "c2")},
           "training": dict(epochs=1, batch_size=3, dtype="float64", seed=1, init_from=str(first.best_path),
                            committee=2)}
    trainer = Trainer(RunConfig.from_dict(raw), progress=False, member=1)
    trainer.setup()
    assert torch.equal(trainer.model.w_sp, load(first.best_path).members[1].w_sp)
    raw["training"]["committee"] = 3
    with pytest.raises(ValueError, match="committee of 2"):
        Trainer(RunConfig.from_dict(raw), progress=False, member=0).setup()
    raw["training"]["committee"] = 1
    raw["output"]["dir"] = str(tmp_path / "c3")  # c2 holds the member folders made above
    with pytest.raises(ValueError, match="committee of 2"):
        Trainer(RunConfig.from_dict(raw), progress=False).setup()


def test_training_data_may_be_a_list_of_files(tmp_path):
    """data.train as a list: the files are read in order, named in the model file, and an
    edit of any of them is noticed on resume."""
    first, second = tmp_path / "a.extxyz", tmp_path / "b.extxyz"
    write(first, labelled(8, seed=100))
    write(second, labelled(4, seed=300))
    run = RunConfig.from_dict({"data": {"train": ["a.extxyz", str(second)], "valid_fraction": 0.25},
                               "model": TINY_MODEL, "training": dict(epochs=1, batch_size=3, dtype="float64"),
                               "output": {"dir": "run"}}, base_dir=tmp_path)
    assert run.data.train == [str(first), str(second)]
    trainer = trained(run)
    assert len(trainer.train_set) + len(trainer.valid_set) == 12
    assert load(tmp_path / "run" / "best.pt").metadata["train_data"] == "a.extxyz, b.extxyz"
    write(second, labelled(4, seed=400))
    with pytest.raises(ValueError, match="data.train .* changed"):
        Trainer(run, progress=False).setup(resume=True)
    for bad in ([], [1, 2], ["a.extxyz", None]):
        with pytest.raises(ValueError, match="data.train must be a file or a non-empty list of files"):
            RunConfig.from_dict({"data": {"train": bad}, "model": TINY_MODEL}, base_dir=tmp_path)


def test_validation_data_may_be_a_list_of_files(tmp_path):
    """data.valid as a list (the held-out part of each data source): every file's frames are
    validated, none is trained on."""
    train, first, second = tmp_path / "t.extxyz", tmp_path / "v1.extxyz", tmp_path / "v2.extxyz"
    write(train, labelled(8, seed=100))
    write(first, labelled(3, seed=200))
    write(second, labelled(2, seed=300))
    run = RunConfig.from_dict({"data": {"train": "t.extxyz", "valid": ["v1.extxyz", str(second)]},
                               "model": TINY_MODEL, "training": dict(epochs=1, batch_size=3, dtype="float64"),
                               "output": {"dir": "run"}}, base_dir=tmp_path)
    assert run.data.valid == [str(first), str(second)]
    trainer = trained(run)
    assert (len(trainer.train_set), len(trainer.valid_set)) == (8, 5)
    with pytest.raises(ValueError, match="data.valid must be a file or a non-empty list of files"):
        RunConfig.from_dict({"data": {"train": "t.extxyz", "valid": []}, "model": TINY_MODEL}, base_dir=tmp_path)


def test_direct_force_leignn_says_that_it_cannot_train_stress(tmp_path):
    """Stress labels with a direct-force LEIGNN: a warning names the ignored stress weight
    (it used to be dropped without a word); with stress_weight 0 nothing is said."""
    import warnings

    frames = []
    for k in range(8):
        atoms = random_crystal(n=4, seed=k, symbols="CO", min_dist=1.2)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
        frames.append(atoms)
    write(tmp_path / "bulk.extxyz", frames)

    def setup(out, **training):
        run = RunConfig.from_dict({
            "data": {"train": str(tmp_path / "bulk.extxyz"), "valid_fraction": 0.25},
            "model": dict(architecture="leignn", force_mode="direct", cutoff=3.5, num_channels=4, num_layers=1,
                          num_radial=4),
            "training": dict(epochs=1, batch_size=3, dtype="float64", **training), "output": {"dir": str(tmp_path / out)}})
        trainer = Trainer(run, progress=False)
        try:
            trainer.setup()
        finally:
            trainer._release()

    with pytest.warns(UserWarning, match=r"6 training structures carry stress labels.*stress_weight 10.0 is ignored"):
        setup("a", stress_weight=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup("b", stress_weight=0.0)


def test_config_type_weights_scale_each_structure_s_share_of_the_loss(data_file, tmp_path):
    """A config_type weighted 0 leaves the loss (and so the gradient) to the others; 2
    doubles its terms; the weights reach training and validation samples alike."""
    from ase_nemp.train.data import make_batch
    from ase_nemp.train.loss import LossWeights, batch_loss

    run = run_config(data_file, tmp_path / "w", epochs=1, config_type_weights={"odd": 0.0})
    trainer = Trainer(run, progress=False)
    try:
        trainer.setup()
    finally:
        trainer._release()
    samples = trainer.train_set + trainer.valid_set
    assert {s.config_type: s.weight for s in samples} == {"even": 1.0, "odd": 0.0}
    model = trainer.model.double()
    weights = LossWeights(energy=3.0, forces=2.0)

    def loss(batch_samples):
        batch = make_batch(batch_samples).to(torch.device("cpu"), torch.float64)
        return float(batch_loss(evaluate_model_out(model, batch), batch, weights))

    even = [s for s in samples if s.config_type == "even"]
    odd = [s for s in samples if s.config_type == "odd"]
    assert loss(even + odd) == pytest.approx(loss(even), rel=1e-12)
    for s in odd:
        s.weight = 2.0
    unweighted = [dataclasses.replace(s, weight=1.0) for s in odd]
    assert loss(even + odd) == pytest.approx(loss(even) + 2 * loss(unweighted), rel=1e-12)
    assert loss(odd) > 0
    for bad in ({"odd": -1}, {"odd": float("inf")}, {"odd": True}, ["odd"]):
        with pytest.raises(ValueError, match="config_type_weights"):
            run_config(data_file, tmp_path / "x", config_type_weights=bad)


def evaluate_model_out(model, batch):
    from ase_nemp.model import energy_forces_stress

    return energy_forces_stress(model, batch.graph, stress=False)
