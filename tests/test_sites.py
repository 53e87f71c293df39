"""Adsorption sites, adsorbate placement and the CO-oxidation network (ase_nemp.sites)."""

import itertools

import numpy as np
import pytest
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from ase_nemp.sites import (BOND_LENGTHS, assign_sites, co_oxidation_network, distinct_pairs, find_sites,
                            lateral_distance, minimum_key, place)

A = 3.9  # Å, Pd lattice constant; nearest neighbours a / sqrt(2)
NN = A / np.sqrt(2)


def slab(size=(3, 3, 4)):
    s = fcc111("Pd", size=size, a=A, vacuum=8.0)
    s.pbc = True
    s.set_constraint(FixAtoms(indices=[a.index for a in s if a.tag >= 3]))
    return s


def test_site_counts_and_positions_agree_with_ase():
    s = slab()
    sites = find_sites(s)
    counts = {k: sum(x.kind == k for x in sites) for k in ("top", "bridge", "fcc", "hcp")}
    assert counts == {"top": 9, "bridge": 27, "fcc": 9, "hcp": 9}
    # ASE's own fcc111 knows one site of each kind (fractional, in the primitive surface cell)
    info = s.info["adsorbate_info"]
    primitive = info["cell"]
    for ase_name, kind in (("ontop", "top"), ("bridge", "bridge"), ("fcc", "fcc"), ("hcp", "hcp")):
        xy = np.asarray(info["sites"][ase_name]) @ primitive
        nearest = min(lateral_distance(xy, x.xy, s) for x in sites if x.kind == kind)
        assert nearest < 1e-6, (kind, nearest)
        other = min(lateral_distance(xy, x.xy, s) for x in sites if x.kind != kind)
        assert other > 0.5


def test_hollows_are_told_apart_by_the_layer_below():
    s = slab()
    z = np.unique(np.round(s.positions[:, 2], 3))
    second = s.positions[np.isclose(s.positions[:, 2], z[-2], atol=0.01)]
    third = s.positions[np.isclose(s.positions[:, 2], z[-3], atol=0.01)]
    for site in find_sites(s, kinds=("fcc", "hcp")):
        over_second = min(lateral_distance(site.xy, p, s) for p in second) < 0.1
        over_third = min(lateral_distance(site.xy, p, s) for p in third) < 0.1
        assert over_second == (site.kind == "hcp") and over_third == (site.kind == "fcc")


def test_bad_slabs_and_kinds_are_refused():
    s = slab()
    with pytest.raises(ValueError, match="unknown site kind"):
        find_sites(s, kinds=("hollow",))
    s.pbc = (False, True, True)
    with pytest.raises(ValueError, match="periodic"):
        find_sites(s)
    with pytest.raises(ValueError, match="adsorbate must be one of"):
        place(slab(), "N2", find_sites(slab())[0])


@pytest.mark.parametrize("kind", ["top", "bridge", "fcc", "hcp"])
def test_place_puts_the_adsorbing_atom_at_its_bond_length(kind):
    s = slab()
    site = next(x for x in find_sites(s) if x.kind == kind)
    for adsorbate, symbol in (("O", "O"), ("CO", "C")):
        atoms = place(s, adsorbate, site)
        index = len(s)
        assert atoms[index].symbol == symbol and len(atoms) == len(s) + len(adsorbate)
        bond = min(atoms.get_distances(index, list(range(len(s))), mic=True))
        family = "hollow" if kind in ("fcc", "hcp") else kind
        assert bond == pytest.approx(BOND_LENGTHS[(symbol, family)], abs=1e-6)
        assert assign_sites(atoms, s)[0][1] == kind
        assert atoms.constraints and len(atoms.constraints[0].index) == len(s.constraints[0].index)


def test_distinct_pairs_on_the_ideal_lattice():
    s = slab()
    pairs = distinct_pairs(s, "CO", "O")
    found = {(a.kind, b.kind): [] for a, b, _ in pairs}
    for a, b, d in pairs:
        found[(a.kind, b.kind)].append(d)
        assert lateral_distance(a.xy, b.xy, s) == pytest.approx(d, abs=0.25)
    # separations between 2.5 and 4 Å on a close-packed lattice: like sites one neighbour
    # apart, fcc-hcp and hollow-top at twice the hollow-top distance NN / sqrt(3)
    assert found[("top", "top")] == [pytest.approx(NN)]
    assert found[("fcc", "fcc")] == [pytest.approx(NN)]
    assert found[("fcc", "hcp")] == [pytest.approx(2 * NN / np.sqrt(3))]
    assert found[("top", "hcp")] == [pytest.approx(2 * NN / np.sqrt(3))]
    # with two of the same adsorbate the order does not count
    same = distinct_pairs(s, "O", "O")
    assert len({(a.kind, b.kind) for a, b, _ in same}) == len({tuple(sorted((a.kind, b.kind))) for a, b, _ in same})
    assert len(same) < len(pairs)


def test_network_structures_and_paths():
    s = slab()
    net = co_oxidation_network(s)
    assert set(net.structures) == {n for names in net.groups.values() for n in names}
    assert all(a in net.structures and b in net.structures for a, b in net.paths.values())
    assert "co_hcp+o_fcc@3.2" in net.groups["co+o"] and "co_fcc+o_fcc@2.8" in net.groups["co+o"]
    sites = find_sites(s)
    for name in net.groups["co+o"]:
        pair, co2 = net.structures[name], net.structures[f"co2<{name}"]
        assert pair.get_chemical_symbols()[len(s):] == ["O", "C", "O"] == co2.get_chemical_symbols()[len(s):]
        separation = float(name.split("@")[1])
        # the adsorbed O sits next to the CO in space (not one periodic image away)
        assert np.linalg.norm(pair.positions[len(s), :2] - pair.positions[len(s) + 1, :2]) == \
            pytest.approx(separation, abs=0.06)
        # the CO2's first O points towards the adsorbed O, so that the atoms map onto the pair's
        o_ads = pair.positions[len(s)]
        assert np.linalg.norm(co2.positions[len(s)] - o_ads) < np.linalg.norm(co2.positions[len(s) + 2] - o_ads)
        kinds = sorted(kind for _, kind, _ in assign_sites(pair, s, sites))
        assert kinds == sorted(part.split("_")[1].split("@")[0] for part in name.split("+"))
    # hop end points are neighbouring sites of the two kinds
    a, b = net.paths["o_fcc>hcp"]
    assert lateral_distance(net.structures[a].positions[-1], net.structures[b].positions[-1], s) == \
        pytest.approx(NN / np.sqrt(3), abs=1e-6)
    keys = {minimum_key(net.structures[n], s, sites) for n in ("co2_up", "co2_far")}
    assert len(keys) == 2  # physisorbed and gas-phase CO2 are different states


def test_nudged_moves_only_the_adsorbates_sideways_and_the_same_way_for_a_name():
    from ase_nemp.learn.explore import nudged

    s = slab()
    net = co_oxidation_network(s)
    name = "co_hcp+o_fcc@3.2"
    atoms = net.structures[name]
    moved = nudged(atoms, name, len(s), nudge=0.05)
    shift = moved.positions - atoms.positions
    assert np.all(shift[: len(s)] == 0) and np.all(shift[:, 2] == 0)  # the slab and heights stay
    assert np.all(np.abs(shift[len(s):, :2]) <= 0.05) and np.abs(shift[len(s):, :2]).max() > 0
    assert np.array_equal(nudged(atoms, name, len(s)).positions, moved.positions)  # seeded by the name
    other = nudged(atoms, "co_fcc+o_fcc@2.8", len(s)).positions
    assert not np.array_equal(other, moved.positions)
    assert np.array_equal(atoms.positions, net.structures[name].positions)  # the original is untouched


def test_run_network_relaxes_and_joins_distinct_minima():
    """With EMT (which knows Pd, C and O): every O-hop end is relaxed, a band is run for each
    pair of distinct minima once, and ends that relax into one minimum make no band."""
    from ase_nemp.learn.explore import run_network
    from ase_nemp.neb import NEBProtocol

    s = slab((2, 2, 3))
    net = co_oxidation_network(s)
    seen = []
    found = run_network(net, s, EMT, NEBProtocol(images=5, steps=60, fmax=0.1, batched=False), fmax=0.05,
                        steps=100, groups=["o hop"], observe=lambda atoms, source: seen.append(source))
    assert set(found["minima"]) == set(net.groups["o hop"])
    assert all(m["converged"] for m in found["minima"].values())
    ran = {n: p for n, p in found["paths"].items() if "barrier" in p}
    skipped = {n: p["skipped"] for n, p in found["paths"].items() if "skipped" in p}
    assert set(ran) | set(skipped) == {n for n in net.paths if n.startswith("o_")}
    assert ran, "no band between distinct O minima"
    pairs = [frozenset((found["minima"][net.paths[n][0]]["key"], found["minima"][net.paths[n][1]]["key"]))
             for n in ran]
    assert len(pairs) == len(set(pairs))  # each pair of minima once
    for name, path in ran.items():
        ends = [found["minima"][end]["energy"] for end in net.paths[name]]
        assert path["barrier"] >= max(ends) - ends[0] - 1e-6  # a band is at least as high as its ends
        assert len(path["images"]) == 5
    assert any(src.startswith("relax:") for src in seen) and any(src.startswith("neb:") for src in seen)
    for name in skipped:
        a, b = (found["minima"][end]["key"] for end in net.paths[name])
        assert a == b or frozenset((a, b)) in pairs


def test_network_exploration_settings_are_checked(tmp_path):
    from ase_nemp.learn.config import Exploration

    def entry(**kw):
        return Exploration.from_dict({"kind": "network", "slab": "slab.extxyz", **kw}, 0, lambda p: str(tmp_path / p))

    ok = entry(groups="o hop", surface_atoms=36)
    assert ok.settings["groups"] == ["o hop"] and ok.settings["slab"] == str(tmp_path / "slab.extxyz")
    assert ok.settings["images"] == [7] and ok.settings["kinds"] == ["top", "bridge", "fcc", "hcp"]
    for bad, match in (({"groups": ["o-hop"]}, "groups must be some of"), ({"kinds": ["hollow"]}, "kinds must be"),
                       ({"reaction": "nh3"}, "reaction must be"), ({"surface_atoms": 0}, "surface_atoms"),
                       ({"surface_atoms": True}, "surface_atoms"), ({"min_distance": 5.0}, "min_distance"),
                       ({"relax_fmax": -1}, "relax_fmax"), ({"spring": 0}, "spring"), ({"images": [2]}, "images"),
                       ({"images": 7.5}, "images")):
        with pytest.raises(ValueError, match=match):
            entry(**bad)
    with pytest.raises(ValueError, match="spring"):  # a plain NEB exploration's band is checked too
        Exploration.from_dict({"kind": "neb", "initial": "a", "final": "b", "spring": -1}, 0, str)
    with pytest.raises(ValueError, match="needs"):
        Exploration.from_dict({"kind": "network"}, 0, str)


def test_network_exploration_collects_candidates_from_relaxations_and_bands(tmp_path):
    """``kind: network`` in nemp learn: a committee explores the O hops of a small slab; the
    frames it visits are candidates, the bands it ran are in the report."""
    from ase.io import write

    from ase_nemp import NEMPCalculator
    from ase_nemp.learn.config import Exploration
    from ase_nemp.learn.explore import explore
    from ase_nemp.model import Committee
    from ase_nemp.testing import random_model, tiny_config

    s = slab((2, 2, 2))
    s.info.pop("adsorbate_info")
    write(tmp_path / "slab.extxyz", s)
    committee = Committee([random_model(tiny_config(species=(6, 8, 46), cutoff=3.0), seed=k) for k in (1, 2)])
    exploration = Exploration.from_dict(
        {"kind": "network", "slab": "slab.extxyz", "groups": ["o hop"], "kinds": ["fcc", "hcp"], "images": 5,
         "relax_steps": 5, "steps": 6, "climb": False}, 0, lambda p: str(tmp_path / p))
    report = explore(exploration, lambda: NEMPCalculator(committee), threshold=0.0, stop_above=1e9)
    sources = {c.source.split(":")[0] for c in report.candidates}
    assert sources == {"relax", "neb"} and report.frames == len(report.candidates) > 0
    assert set(report.details["network"]["bands"]) <= {"o_fcc>hcp"}
    assert report.details["network"]["minima"] >= 1
