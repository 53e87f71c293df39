"""Exact parity with the NEMP authors' reference implementation (design/parity)."""

import json

import numpy as np
import pytest
import torch

from ase_nemp.convert import config_from_reference, from_reference
from ase_nemp.model import energy_forces_stress
from ase_nemp.nl import matscipy_neighbour_list

from .conftest import CASES, PARITY_DIR, RTOL, close, load_case, require

@pytest.mark.parametrize("name", CASES)
def test_energy_forces_stress_match_reference(name):
    data, model, graph = load_case(name)
    periodic = bool(data["pbc"].any())
    out = energy_forces_stress(model, graph, stress=periodic)
    e_bar = float(data["e_bar"])
    assert abs(out["energy"].item() - data["E_abs"][0]) <= RTOL * abs(data["E_abs"][0])
    fitted = out["energy"].item() - len(data["z"]) * e_bar
    assert abs(fitted - data["E"][0]) <= RTOL * abs(data["E"][0])
    close(out["energies"].numpy() - e_bar, data["E_i"])
    close(out["forces"].numpy(), data["F"])
    if periodic:
        close(out["stress"].numpy(), data["stress"])
        volume = abs(np.linalg.det(data["H"][0]))
        close(out["stress"].numpy() * volume, data["dE_dstrain"])


@pytest.mark.parametrize("name", CASES)
def test_intermediates_match_reference(name):
    data, model, graph = load_case(name)
    trace = {}
    species = model.species_index(graph.numbers)
    with torch.no_grad():
        model.atomic_energies_of(graph.positions, species, graph.edge_index, graph.shifts, graph.cell, graph.batch, trace)
    for key in ("n", "Yhat", "sigma", "k", "w", "readout_input", "readout_raw"):
        close(trace[key].numpy(), data[f"dbg.{key}"])
    close(torch.stack(trace["V_in"]).numpy(), data["dbg.V_in"])
    close(torch.stack(trace["V_prenorm"]).numpy(), data["dbg.V_prenorm"])


@pytest.mark.parametrize("name", CASES)
def test_own_neighbour_list_gives_reference_edges(name):
    data = np.load(require(PARITY_DIR / f"{name}.npz"))
    hp = json.loads(str(data["hp_json"]))
    i, j, S = matscipy_neighbour_list(data["x"], data["H"][0], data["pbc"][0], hp["cutoff"])
    ours = sorted(zip(i.tolist(), j.tolist(), map(tuple, S.tolist())))
    ref = sorted(zip(*data["edge_index"].tolist(), map(tuple, data["shift"].tolist())))
    assert ours == ref


def test_reference_config_is_read_with_spec_names():
    data = np.load(require(PARITY_DIR / "case_d_molecule_znum_linear.npz"))
    cfg = config_from_reference(str(data["hp_json"]))
    assert cfg.pair_input == "atomic_number" and cfg.readout_bias and cfg.edge_mlp.linear
    assert cfg.pair_mlp.blocks == 2 and cfg.pair_mlp.layers == 1
    bad = dict(data)
    del bad["K_0.W_out"]
    with pytest.raises(KeyError, match="K_0.W_out"):
        from_reference(bad, str(data["hp_json"]))
