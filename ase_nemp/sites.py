"""Adsorption sites of a close-packed surface and the structures of a surface reaction network.

For a slab whose surface is the top of the cell (cell vectors ``a`` and ``b`` in the
surface plane, the vacuum along ``c``), :func:`find_sites` locates every top, bridge, fcc
and hcp site of the unit cell from the geometry alone: top sites sit above first-layer
atoms, bridges halfway between two nearest neighbours, hollows at the centre of three;
a hollow with a second-layer atom below it is hcp, one without is fcc.

On top of that:

* :func:`place` puts an adsorbate (``"O"``, ``"C"``, ``"CO"`` C down, ``"CO2"`` lying flat)
  on a site at its bond length from the nearest surface atom;
* :func:`distinct_pairs` lists the pairs of sites for two adsorbates that differ by the site
  types and their lateral separation (in a periodic cell, pairs with the same types and
  separation are images of one another by the surface's symmetry);
* :func:`assign_sites` says which site each adsorbate of a relaxed structure sits on, so
  that relaxed structures can be grouped into distinct minima (:func:`minimum_key`);
* :func:`co_oxidation_network` builds the starting structures of CO + O on a surface: every
  distinct CO + O pair, a CO2 lying above each pair (the product of CO + O -> CO2), O and CO
  alone on every site type (for hops between neighbouring sites), CO2 above the surface
  and far from it (desorption), and two O or two CO in the cell (a second coverage).

Distances are in Å. Atoms of a slab keep their order; adsorbate atoms are appended.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from ase import Atoms

__all__ = ["Site", "find_sites", "place", "distinct_pairs", "lateral_distance", "assign_sites", "minimum_key",
           "co_oxidation_network", "Network", "SITE_KINDS", "BOND_LENGTHS"]

SITE_KINDS = ("top", "bridge", "fcc", "hcp")
# Å, adsorbing atom to its nearest surface atom; C on top sits closer than in a hollow
BOND_LENGTHS = {("O", "hollow"): 2.02, ("O", "bridge"): 1.98, ("O", "top"): 1.85,
                ("C", "hollow"): 2.02, ("C", "bridge"): 1.98, ("C", "top"): 1.87}
CO_BOND, CO2_BOND = 1.16, 1.17
CO2_HEIGHT = 3.2  # Å above the top layer: CO2 physisorbed


@dataclass(frozen=True)
class Site:
    """One adsorption site: its ``kind`` (top, bridge, fcc, hcp), its lateral position
    (``x``, ``y``, Å, inside the cell) and the height of the top layer (``z``, Å)."""

    kind: str
    x: float
    y: float
    z: float

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y])


def _surface_frame(slab: Atoms) -> np.ndarray:
    """The 2x2 in-plane cell; refuses cells whose surface is not the a-b plane."""
    cell = slab.cell.array
    if not (slab.pbc[0] and slab.pbc[1]):
        raise ValueError("find_sites needs a slab periodic along the cell vectors a and b")
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise ValueError("find_sites needs the surface in the a-b plane of the cell (a and b with no z component)")
    return cell[:2, :2]


def _wrap(xy: np.ndarray, frame: np.ndarray) -> np.ndarray:
    frac = np.linalg.solve(frame.T, np.atleast_2d(xy).T).T
    frac -= np.floor(frac + 1e-9)
    return frac @ frame


def lateral_distance(p: np.ndarray, q: np.ndarray, slab: Atoms) -> float:
    """Smallest in-plane distance (Å) between two lateral positions under the slab's periodicity."""
    frame = _surface_frame(slab)
    d = np.linalg.solve(frame.T, np.asarray(q, float)[:2] - np.asarray(p, float)[:2])
    d -= np.round(d)
    return float(min(np.linalg.norm((d + s) @ frame) for s in itertools.product((-1, 0, 1), repeat=2)))


def _layers(slab: Atoms, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    z = slab.positions[:, 2]
    top = z > z.max() - tolerance
    below = z[~top]
    if below.size == 0:
        return slab.positions[top], np.empty((0, 3))
    second = (~top) & (z > below.max() - tolerance)
    return slab.positions[top], slab.positions[second]


def find_sites(slab: Atoms, kinds=SITE_KINDS, layer_tolerance: float = 0.5) -> list[Site]:
    """Every site of the given ``kinds`` in the slab's unit cell.

    ``slab`` holds the surface atoms only (no adsorbates); its top layer is every atom within
    ``layer_tolerance`` Å of the highest. Nearest neighbours are first-layer atoms within
    1.2 times the shortest first-layer distance.
    """
    unknown = sorted(set(kinds) - set(SITE_KINDS))
    if unknown:
        raise ValueError(f"unknown site kind(s) {unknown}; known: {list(SITE_KINDS)}")
    frame = _surface_frame(slab)
    top, second = _layers(slab, layer_tolerance)
    if len(top) == 0:
        raise ValueError("the slab has no atoms")
    shifts = [i * frame[0] + j * frame[1] for i, j in itertools.product((-1, 0, 1), repeat=2)]
    images = np.concatenate([top[:, :2] + s for s in shifts])
    home = images[4 * len(top):5 * len(top)]  # shift (0, 0)
    dist = np.linalg.norm(home[:, None, :] - images[None, :, :], axis=-1)
    dist[dist < 1e-6] = np.inf
    if not np.isfinite(dist).any():
        raise ValueError("the top layer has a single atom and no periodic neighbour")
    nn = 1.2 * dist.min()
    z_surface = float(top[:, 2].mean())
    points: dict[str, list[np.ndarray]] = {"top": list(home), "bridge": [], "hollow": []}
    for i in range(len(home)):
        neighbours = np.flatnonzero(dist[i] < nn)
        for j in neighbours:
            points["bridge"].append(0.5 * (home[i] + images[j]))
        for j, k in itertools.combinations(neighbours, 2):
            if np.linalg.norm(images[j] - images[k]) < nn:
                points["hollow"].append((home[i] + images[j] + images[k]) / 3.0)
    second_images = (np.concatenate([second[:, :2] + s for s in shifts]) if len(second) else np.empty((0, 2)))
    sites: list[Site] = []
    for kind, group in points.items():
        unique: list[np.ndarray] = []
        for p in _wrap(np.array(group), frame) if group else []:
            if all(lateral_distance(p, q, slab) > 0.1 for q in unique):
                unique.append(p)
        for p in unique:
            if kind == "hollow":
                below = len(second_images) and np.min(np.linalg.norm(second_images - p, axis=1)) < 0.5
                label = "hcp" if below else "fcc"
            else:
                label = kind
            if label in kinds:
                sites.append(Site(label, float(p[0]), float(p[1]), z_surface))
    return sites


def _bond_height(slab: Atoms, site: Site, species: str, bond: float | None) -> float:
    """Height above the top layer that puts an atom of ``species`` on ``site`` at its bond
    length from the nearest first-layer atom."""
    top, _ = _layers(slab, 0.5)
    lateral = min(lateral_distance(site.xy, p[:2], slab) for p in top)
    if bond is None:
        family = "hollow" if site.kind in ("fcc", "hcp") else site.kind
        if (species, family) not in BOND_LENGTHS:
            raise ValueError(f"no default bond length for {species} on a {site.kind} site; pass bond=")
        bond = BOND_LENGTHS[(species, family)]
    if bond <= lateral:
        raise ValueError(f"bond length {bond} Å is shorter than the lateral distance {lateral:.2f} Å to the surface")
    return float(np.sqrt(bond**2 - lateral**2))


def place(slab: Atoms, adsorbate: str, site: Site, bond: float | None = None,
          direction: np.ndarray | None = None, onto: Atoms | None = None) -> Atoms:
    """A copy of ``slab`` (or of ``onto``: the slab with adsorbates already placed) with
    ``adsorbate`` on ``site`` (constraints kept).

    ``adsorbate``: ``"O"`` or ``"C"`` (one atom), ``"CO"`` (C down, O straight above) or
    ``"CO2"`` (lying flat at 3.2 Å above the top layer, centred on the site, its axis along
    the in-plane ``direction``, default x). ``bond`` overrides the default bond length (Å)
    of the adsorbing atom to the nearest surface atom.
    """
    out = (slab if onto is None else onto).copy()
    if adsorbate in ("O", "C", "CO"):
        species = adsorbate[0]
        z = site.z + _bond_height(slab, site, species, bond)
        out.append(species)
        out.positions[-1] = (site.x, site.y, z)
        if adsorbate == "CO":
            out.append("O")
            out.positions[-1] = (site.x, site.y, z + CO_BOND)
    elif adsorbate == "CO2":
        axis = np.array([1.0, 0.0]) if direction is None else np.asarray(direction, float)[:2]
        norm = np.linalg.norm(axis)
        if not norm > 0:
            raise ValueError("direction must have an in-plane component")
        axis = np.append(axis / norm, 0.0)
        centre = np.array([site.x, site.y, site.z + CO2_HEIGHT])
        for symbol, offset in (("O", -CO2_BOND), ("C", 0.0), ("O", CO2_BOND)):
            out.append(symbol)
            out.positions[-1] = centre + offset * axis
    else:
        raise ValueError(f"adsorbate must be one of O, C, CO, CO2, not {adsorbate!r}")
    return out


def distinct_pairs(slab: Atoms, first: str, second: str, kinds=SITE_KINDS, sites: list[Site] | None = None,
                   min_distance: float = 2.5, max_distance: float = 4.0,
                   tolerance: float = 0.25) -> list[tuple[Site, Site, float]]:
    """Pairs of sites for ``first`` and ``second`` that are distinct by site types and lateral
    separation (Å), with the separation in ``[min_distance, max_distance]``.

    Separations of the same types within ``tolerance`` of one another count as one (a relaxed
    slab is not quite the ideal lattice; distinct separations on a close-packed lattice differ
    by 0.3 Å or more). For two adsorbates of the same species the order of the kinds does not
    count. Returns ``(site_of_first, site_of_second, separation)`` sorted by kinds and
    separation; the separation is the group's mean.
    """
    sites = find_sites(slab, kinds) if sites is None else sites
    groups: dict[tuple, list[tuple[float, Site, Site]]] = {}
    for a in sites:
        for b in sites:
            d = lateral_distance(a.xy, b.xy, slab)
            if min_distance <= d <= max_distance:
                kinds_key = (a.kind, b.kind) if first != second else tuple(sorted((a.kind, b.kind)))
                pair = (a, b) if first != second or (a.kind, b.kind) == kinds_key else (b, a)
                groups.setdefault(kinds_key, []).append((d, *pair))
    out = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda m: m[0])
        cluster = [members[0]]
        for m in members[1:] + [None]:
            if m is not None and m[0] - cluster[0][0] <= tolerance:
                cluster.append(m)
                continue
            _, a, b = cluster[0]
            out.append((a, b, float(np.mean([c[0] for c in cluster]))))
            cluster = [m]
    return out


def assign_sites(atoms: Atoms, slab: Atoms, sites: list[Site] | None = None) -> list[tuple[int, str, float]]:
    """For every adsorbate atom bound to the surface (within 2.6 Å of a surface atom), the
    nearest site: ``(index, kind, lateral distance to it in Å)``.

    ``atoms`` is ``slab`` with adsorbates appended (the slab's atoms first).
    """
    sites = find_sites(slab) if sites is None else sites
    n = len(slab)
    out = []
    for i in range(n, len(atoms)):
        bound = min(atoms.get_distances(i, list(range(n)), mic=True)) < 2.6
        if not bound:
            continue
        best = min(sites, key=lambda s: lateral_distance(atoms.positions[i], s.xy, slab))
        out.append((i, best.kind, lateral_distance(atoms.positions[i], best.xy, slab)))
    return out


def minimum_key(atoms: Atoms, slab: Atoms, sites: list[Site] | None = None, physisorbed: float = 4.5) -> tuple:
    """What identifies a relaxed adsorbate structure: the species and site kind of every bound
    adsorbate atom, the numbers of unbound adsorbate atoms within ``physisorbed`` Å of the
    top layer and beyond it, and the lateral separations of the bound atoms (rounded to
    0.1 Å). Two relaxations with equal keys reached the same minimum."""
    bound = assign_sites(atoms, slab, sites)
    labels = sorted((atoms[i].symbol, kind) for i, kind, _ in bound)
    separations = sorted(round(lateral_distance(atoms.positions[i], atoms.positions[j], slab), 1)
                         for (i, _, _), (j, _, _) in itertools.combinations(bound, 2))
    surface = slab.positions[:, 2].max()
    unbound = [i for i in range(len(slab), len(atoms)) if i not in {b[0] for b in bound}]
    near = sum(atoms.positions[i, 2] - surface < physisorbed for i in unbound)
    return (tuple(labels), int(near), len(unbound) - int(near), tuple(separations))


@dataclass
class Network:
    """Starting structures of a reaction network (unrelaxed) and the elementary steps between
    them: ``paths[name] = (initial, final)``, names of ``structures``."""

    structures: dict[str, Atoms]
    paths: dict[str, tuple[str, str]]
    groups: dict[str, list[str]]


def _nearest_image(a: Site, b: Site, frame: np.ndarray) -> np.ndarray:
    """The periodic image of ``b``'s position nearest to ``a`` (in an oblique cell, rounding the
    fractional offset alone can miss it)."""
    offset = np.linalg.solve(frame.T, b.xy - a.xy)
    offset -= np.round(offset)
    shifted = [(offset + s) @ frame for s in itertools.product((-1, 0, 1), repeat=2)]
    return a.xy + min(shifted, key=np.linalg.norm)


def co_oxidation_network(slab: Atoms, kinds=SITE_KINDS, min_distance: float = 2.5,
                         max_distance: float = 4.0) -> Network:
    """Starting structures and elementary steps of CO oxidation on ``slab``.

    Structures, by group:

    * ``co+o``: CO and O on every distinct pair of sites (:func:`distinct_pairs`), named like
      ``"co_hcp+o_fcc@3.2"`` (separation in Å); atom order slab, O, C, O as in the data;
    * ``co2``: for each pair, CO2 lying flat above the pair's midpoint along its C-O
      direction (``"co2<co_hcp+o_fcc@3.2"``), its first O towards the adsorbed O;
    * ``o hop``, ``co hop``: one O (or CO) on two neighbouring sites of every two kinds
      (``"o_fcc>hcp:fcc"`` and ``"o_fcc>hcp:hcp"``);
    * ``desorbed``: CO2 above the surface and 6 Å higher (``"co2_up"``, ``"co2_far"``);
    * ``o+o``, ``co+co``: two O or two CO on every distinct pair of sites (a second coverage).

    Paths: CO + O -> CO2 for every pair, the hops, and CO2 desorption. Structures that relax
    to the same minimum (:func:`minimum_key`) make paths that are one and the same.
    """
    sites = find_sites(slab, kinds)
    frame = _surface_frame(slab)
    structures: dict[str, Atoms] = {}
    paths: dict[str, tuple[str, str]] = {}
    groups: dict[str, list[str]] = {g: [] for g in ("co+o", "co2", "o hop", "co hop", "desorbed", "o+o", "co+co")}

    def add(group, name, atoms):
        structures[name] = atoms
        groups[group].append(name)

    for a, b, d in distinct_pairs(slab, "CO", "O", kinds, sites, min_distance, max_distance):
        name = f"co_{a.kind}+o_{b.kind}@{d:.1f}"
        b_near = _nearest_image(a, b, frame)  # the O next to the CO in space, not a periodic image away
        add("co+o", name, place(slab, "CO", a, onto=place(slab, "O", Site(b.kind, *b_near, b.z))))
        mid = Site("mid", *(0.5 * (a.xy + b_near)), a.z)
        add("co2", f"co2<{name}", place(slab, "CO2", mid, direction=a.xy - b_near))
        paths[f"{name} -> co2"] = (name, f"co2<{name}")
    for species in ("O", "CO"):
        group, tag = f"{species.lower()} hop", species.lower()
        for k1, k2 in itertools.combinations(sorted({s.kind for s in sites}), 2):
            a = next(s for s in sites if s.kind == k1)
            b = min((s for s in sites if s.kind == k2), key=lambda s: lateral_distance(a.xy, s.xy, slab))
            b_near = Site(k2, *_nearest_image(a, b, frame), b.z)
            name = f"{tag}_{k1}>{k2}"
            add(group, f"{name}:{k1}", place(slab, species, a))
            add(group, f"{name}:{k2}", place(slab, species, b_near))
            paths[name] = (f"{name}:{k1}", f"{name}:{k2}")
    centre = next((s for s in sites if s.kind == "fcc"), sites[0])
    up = place(slab, "CO2", centre)
    far = up.copy()
    far.positions[-3:, 2] += 6.0
    add("desorbed", "co2_up", up)
    add("desorbed", "co2_far", far)
    paths["co2 desorption"] = ("co2_up", "co2_far")
    for species, group in (("O", "o+o"), ("CO", "co+co")):
        tag = species.lower()
        for a, b, d in distinct_pairs(slab, species, species, kinds, sites, min_distance, max_distance):
            add(group, f"{tag}_{a.kind}+{tag}_{b.kind}@{d:.1f}", place(slab, species, b, onto=place(slab, species, a)))
    return Network(structures, paths, groups)
