"""Starting structures for the active-learning run of the shipped pd-co-o model.

    python benchmarks/pd_co_o/make_structures.py      # writes benchmarks/pd_co_o/learn/*.extxyz

All use the slab of the initial state ``ase_nemp/examples/pd111_co_o_is.extxyz`` (a 3x3x4
Pd(111) slab, bottom two layers fixed) and the atom order of the data (36 Pd, then O, C,
O). Sites are found from the geometry: top (above a first-layer atom), bridge (between
two), fcc (hollow with no second-layer atom below), hcp (hollow above a second-layer atom).

* ``sites.extxyz``: O alone, CO alone (C down) and CO + O co-adsorbed at neighbouring
  sites, at fcc, hcp, top and bridge sites, for relaxations with the committee.
* ``leaving.extxyz``: scans for single points: the adsorbed O of the initial state lifted
  from its fcc site to 5.5 Å above the surface (with and without the CO), and the CO
  lifted from its hcp site, in steps of 0.25 Å: the configurations a band or an MD run
  slides into when an adsorbate leaves the surface.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "learn"
BOND = {"O": 2.02, "C": 2.02}  # Å to the nearest surface Pd; C on top sits closer
BOND_C_TOP = 1.87
CO_BOND = 1.16
NEIGHBOUR = 2.9  # Å between co-adsorbed O and C (the initial state's is 3.0)


def slab():
    initial = read(ROOT / "ase_nemp" / "examples" / "pd111_co_o_is.extxyz")
    initial.calc = None
    base = initial[:36]
    base.set_constraint(initial.constraints[0].copy())
    return base


def sites(base: Atoms) -> dict[str, np.ndarray]:
    """One (x, y) position per site type near the cell centre, and the top-layer height."""
    z = base.positions[:, 2]
    top = base.positions[z > z.max() - 0.3]
    second = base.positions[(z < z.max() - 1.0) & (z > z.max() - 3.0)]
    cell = base.cell.array

    def images(points):
        shifts = [i * cell[0] + j * cell[1] for i, j in itertools.product((-1, 0, 1), repeat=2)]
        return np.concatenate([points + s for s in shifts])

    top_all, second_all = images(top), images(second)
    centre = 0.5 * (cell[0] + cell[1])[:2]
    found = {"top": min(top_all[:, :2], key=lambda p: np.linalg.norm(p - centre))}
    a = found["top"]
    near = sorted(top_all[:, :2], key=lambda p: np.linalg.norm(p - a))[1:7]
    found["bridge"] = 0.5 * (a + near[0])
    for b, c in itertools.combinations(near, 2):
        if abs(np.linalg.norm(b - c) - np.linalg.norm(a - b)) < 0.1 and np.linalg.norm(a - b) < 3.0:
            hollow = (a + b + c) / 3.0
            below = np.min(np.linalg.norm(second_all[:, :2] - hollow, axis=1)) < 0.5
            found.setdefault("hcp" if below else "fcc", hollow)
        if "hcp" in found and "fcc" in found:
            break
    found["surface_z"] = np.array([top[:, 2].mean()])
    return found


def height(lateral: float, species: str, top: bool) -> float:
    """Height above the top layer that puts the adsorbing atom at its bond length from the
    nearest Pd, ``lateral`` Å away in the plane."""
    bond = BOND_C_TOP if (species == "C" and top) else BOND[species]
    return float(np.sqrt(bond**2 - lateral**2))


def adsorbate(site_xy, lateral, z0, species, top=False):
    """O (``"O"``) or CO, C down (``"CO"``), above ``site_xy``."""
    x, y = site_xy
    if species == "O":
        return Atoms("O", positions=[[x, y, z0 + height(lateral, "O", top)]])
    h = z0 + height(lateral, "C", top)
    return Atoms("CO", positions=[[x, y, h], [x, y, h + CO_BOND]])


def main() -> None:
    base = slab()
    s = sites(base)
    z0 = float(s["surface_z"][0])
    cell = base.cell.array
    lateral = {"top": 0.0, "bridge": float(np.linalg.norm(s["bridge"] - s["top"])),
               "fcc": float(np.linalg.norm(s["fcc"] - s["top"])), "hcp": float(np.linalg.norm(s["hcp"] - s["top"]))}
    frames = []
    for name in ("fcc", "hcp", "top", "bridge"):
        for species in ("O", "CO"):
            atoms = base + adsorbate(s[name], lateral[name], z0, species, top=name == "top")
            atoms.info.update(config_type=f"{species}_{name}")
            frames.append(atoms)
    # CO + O on neighbouring sites (O first, as in the data: 36 Pd, O, C, O): the O on the
    # copy of its site type (shifted by surface lattice vectors) closest to NEIGHBOUR Å
    steps = [i * cell[0][:2] / 3.0 + j * cell[1][:2] / 3.0 for i, j in itertools.product(range(-3, 4), repeat=2)]
    for o_site, co_site in (("fcc", "hcp"), ("fcc", "top"), ("hcp", "fcc"), ("fcc", "bridge"), ("hcp", "top"),
                            ("top", "fcc")):
        o_xy = min((s[o_site] + d for d in steps), key=lambda p: abs(np.linalg.norm(p - s[co_site]) - NEIGHBOUR))
        atoms = base + adsorbate(o_xy, lateral[o_site], z0, "O", top=o_site == "top")
        atoms += adsorbate(s[co_site], lateral[co_site], z0, "CO", top=co_site == "top")
        atoms.wrap()
        atoms.info.update(config_type=f"O_{o_site}+CO_{co_site}")
        frames.append(atoms)
    OUT.mkdir(exist_ok=True)
    write(OUT / "sites.extxyz", frames)

    initial = read(ROOT / "ase_nemp" / "examples" / "pd111_co_o_is.extxyz")
    initial.calc = None
    scans = []
    for lift in np.arange(0.25, 4.01, 0.25):
        up = initial.copy()
        up.positions[36, 2] += lift  # the adsorbed O
        up.info.update(config_type="O_leaving", lift=float(lift))
        scans.append(up)
        alone = up[[k for k in range(len(up)) if k not in (37, 38)]]
        alone.set_constraint(initial.constraints[0].copy())
        alone.info.update(config_type="O_leaving_alone", lift=float(lift))
        scans.append(alone)
        co = initial.copy()
        co.positions[37:39, 2] += lift
        co.info.update(config_type="CO_leaving", lift=float(lift))
        scans.append(co)
    write(OUT / "leaving.extxyz", scans)
    print(f"wrote {len(frames)} site structures and {len(scans)} scan points to {OUT}")


if __name__ == "__main__":
    main()
