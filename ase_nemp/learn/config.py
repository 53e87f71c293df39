"""Configuration of ``nemp learn``: a YAML file with these sections.

.. code-block:: yaml

    data:                         # the labelled data to start from, as in nemp train
      train: train.extxyz
      valid_fraction: 0.1         # split with training.seed of the start committee's run
      isolated_atoms: e0.extxyz
    start: committee.pt           # a committee file (nemp train with training.committee: N)
    teacher:                      # any ASE calculator: module:Class or path/to/file.py:Class
      calculator: ase.calculators.emt:EMT   # imported and run as code: only use configs you trust
      kwargs: {}
      scheduler: serial           # or processes:4, or tcp://HOST:PORT (Dask): a round's frames at once
    explore:                      # what the committee explores every round (see below)
      - {kind: md, structures: is.extxyz, temperatures: [300, 600], steps: 400}
      - {kind: relax, structures: sites.extxyz}
      - {kind: neb, initial: is.extxyz, final: fs.extxyz, images: [7, 11]}
      - {kind: structures, structures: scan.extxyz}
    select:
      threshold: 0.1              # eV/Å: label frames whose largest atomic force uncertainty exceeds it
      max_per_round: 40           # teacher calls per round at most
      min_distance: 0.15          # Å: no two selected frames closer than this (largest atomic shift)
    rounds: 5                     # at most; stops earlier when nothing exceeds the threshold
    finetune:                     # nemp train settings for each round (starts from the committee)
      epochs: 10
    monitor: heldout.extxyz       # optional labelled frames, evaluated every round (never trained on)
    dtype: float64                # of the exploring committee (float32 is faster)
    output:
      dir: runs/learn

Relative paths are resolved against the YAML file's folder.

Explorations (each runs with the current committee as calculator; every structure of a
``structures`` file is explored):

``md``
    Langevin dynamics: ``temperatures`` (K), ``steps``, ``timestep`` (fs, 1.0),
    ``friction`` (1/fs, 0.02), ``interval`` (steps between checks, 10), ``seed`` (with the
    round number: every round starts new, reproducible trajectories).
``relax``
    BFGS: ``fmax`` (eV/Å, 0.05), ``steps`` (200); every step is a candidate.
``neb``
    The NEB protocol of ``nemp demo`` (:mod:`ase_nemp.neb`) between ``initial`` and
    ``final`` for each entry of ``images``; every image of every step is a candidate.
    Any :class:`~ase_nemp.neb.NEBProtocol` field may be given.
``structures``
    Single points on the given frames (scans, hand-made configurations).
``network``
    The reaction network of CO oxidation on a surface (:mod:`ase_nemp.sites`): on ``slab``
    (a file; its first ``surface_atoms`` atoms, default all, are the bare surface) every
    distinct CO + O pair of sites (``kinds``, lateral separation from ``min_distance`` to
    ``max_distance`` Å), the CO2 each forms, O and CO on neighbouring sites, CO2 on and off
    the surface, two O and two CO. Each structure is relaxed (BFGS, ``relax_fmax``,
    ``relax_steps``), then a band (``images``, the first entry; any NEBProtocol field) joins
    the ends of every elementary step that relaxed to two different minima. ``groups`` limits it to some of
    ``co+o``, ``co2``, ``o hop``, ``co hop``, ``desorbed``, ``o+o``, ``co+co``.

An MD or NEB run that meets a frame with uncertainty above ``select.stop_above`` (eV/Å,
default 10 x threshold) stops there: beyond it the trajectory is meaningless, and the
frames that led to it are the ones worth labelling.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..train.config import DataConfig, TrainConfig, _strict, read_yaml

__all__ = ["LearnConfig", "SelectConfig", "TeacherConfig", "Exploration", "EXPLORATION_KINDS"]

# per kind: its settings and their defaults (None = required)
EXPLORATION_KINDS: dict[str, dict[str, Any]] = {
    "md": {"structures": None, "temperatures": [300.0], "steps": 400, "timestep": 1.0, "friction": 0.02,
           "interval": 10, "seed": 0},
    "relax": {"structures": None, "fmax": 0.05, "steps": 200},
    "neb": {"initial": None, "final": None, "images": [7]},
    "structures": {"structures": None},
    "network": {"slab": None, "surface_atoms": "all", "reaction": "co_oxidation", "kinds": ["top", "bridge", "fcc", "hcp"],
                "min_distance": 2.5, "max_distance": 4.0, "groups": "all", "images": [7]},
}
_PATH_KEYS = ("structures", "initial", "final", "slab")


def _dtype(value) -> str:
    if value not in ("float32", "float64"):
        raise ValueError(f"dtype (of the exploring committee) must be float32 or float64, not {value!r}")
    return value


@dataclass(frozen=True)
class Exploration:
    """One entry of ``explore``: its ``kind``, a ``name`` for the log, and its settings."""

    kind: str
    name: str
    settings: dict

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], index: int, resolve) -> "Exploration":
        raw = dict(raw)
        kind = raw.pop("kind", None)
        if kind not in EXPLORATION_KINDS:
            raise ValueError(f"explore entry {index}: kind must be one of {list(EXPLORATION_KINDS)}, not {kind!r}")
        name = str(raw.pop("name", f"{kind}-{index}"))
        from ..neb import NEBProtocol

        known = dict(EXPLORATION_KINDS[kind])
        if kind in ("neb", "network"):
            known.update({f.name: f.default for f in dataclasses.fields(NEBProtocol) if f.name != "images"})
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"explore entry {index} ({kind}): unknown key(s) {unknown}; known: {sorted(known)}")
        settings = {**known, **raw}
        missing = [k for k, v in settings.items() if v is None and EXPLORATION_KINDS[kind].get(k, 0) is None]
        if missing:
            raise ValueError(f"explore entry {index} ({kind}) needs {missing}")
        for key in _PATH_KEYS:
            if key in settings:
                settings[key] = resolve(settings[key])
        for key in ("temperatures", "images"):
            if key in settings and not isinstance(settings[key], (list, tuple)):
                settings[key] = [settings[key]]
        _check_numbers(settings, f"explore entry {index} ({kind})")
        if kind == "network":
            _check_network(settings, index)
        if kind in ("neb", "network"):  # the band's settings are checked now, not rounds later
            images = settings["images"]
            if not images or any(isinstance(n, bool) or not isinstance(n, int) for n in images):
                raise ValueError(f"explore entry {index} ({kind}): images must be whole numbers, got {images!r}")
            try:
                for n in images:
                    NEBProtocol.from_settings(settings, n)
            except (TypeError, ValueError) as err:
                raise ValueError(f"explore entry {index} ({kind}): {err}") from None
        return cls(kind, name, settings)


# per setting: (whole number?, smallest allowed value, is the smallest value itself allowed?)
_NUMBERS = {"steps": (True, 1, True), "interval": (True, 1, True), "seed": (True, 0, True),
            "timestep": (False, 0.0, False), "friction": (False, 0.0, True), "fmax": (False, 0.0, False),
            "temperatures": (False, 0.0, False), "min_distance": (False, 0.0, True),
            "max_distance": (False, 0.0, False)}


def _check_numbers(settings: dict, where: str) -> None:
    """Steps, intervals, temperatures, time steps and forces of an exploration: finite
    numbers in their range, whole where they count (no -5 MD steps, no ``steps: true``)."""
    import math

    for key, (whole, low, inclusive) in _NUMBERS.items():
        if key not in settings:
            continue
        for value in settings[key] if isinstance(settings[key], (list, tuple)) else [settings[key]]:
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            ok = ok and (isinstance(value, int) if whole else True)
            ok = ok and (value >= low if inclusive else value > low)
            if not ok:
                kind = "a whole number" if whole else "a finite number"
                bound = f">= {low}" if inclusive else f"> {low}"
                raise ValueError(f"{where}: {key} must be {kind} {bound}, got {value!r}")


NETWORK_GROUPS = ("co+o", "co2", "o hop", "co hop", "desorbed", "o+o", "co+co")


def _check_network(settings: dict, index: int) -> None:
    from ..sites import SITE_KINDS

    where = f"explore entry {index} (network)"
    if settings["reaction"] != "co_oxidation":
        raise ValueError(f"{where}: reaction must be 'co_oxidation' (the one network built in), "
                         f"not {settings['reaction']!r}")
    unknown = sorted(set(settings["kinds"]) - set(SITE_KINDS))
    if unknown or not settings["kinds"]:
        raise ValueError(f"{where}: kinds must be some of {list(SITE_KINDS)}, got {settings['kinds']!r}")
    if settings["groups"] != "all":
        groups = settings["groups"] if isinstance(settings["groups"], (list, tuple)) else [settings["groups"]]
        unknown = sorted(set(groups) - set(NETWORK_GROUPS))
        if unknown or not groups:
            raise ValueError(f"{where}: groups must be some of {list(NETWORK_GROUPS)}, got {settings['groups']!r}")
        settings["groups"] = list(groups)
    surface = settings["surface_atoms"]
    if surface != "all" and (isinstance(surface, bool) or not isinstance(surface, int) or surface < 1):
        raise ValueError(f"{where}: surface_atoms must be a whole number >= 1, got {surface!r}")
    if not 0 <= float(settings["min_distance"]) < float(settings["max_distance"]):
        raise ValueError(f"{where}: need 0 <= min_distance < max_distance (Å)")


@dataclass(frozen=True)
class SelectConfig:
    """Which explored frames go to the teacher (section ``select``).

    Attributes
    ----------
    threshold : float
        eV/Å. A frame is a candidate when its largest atomic ``forces_uncertainty``
        exceeds this.
    max_per_round : int
        Teacher calls per round at most: the most uncertain candidates are taken first.
    min_distance : float
        Å. A candidate is skipped when another selected frame (or an already labelled one)
        with the same atoms has all atoms within this distance of it: no near-duplicates.
    stop_above : float or None
        eV/Å. MD and NEB runs stop at a frame above this (default 10 x threshold).
    """

    threshold: float = 0.1
    max_per_round: int = 40
    min_distance: float = 0.15
    stop_above: float | None = None

    def __post_init__(self) -> None:
        if not (self.threshold > 0 and self.threshold < float("inf")):
            raise ValueError(f"select.threshold must be positive (eV/Å), got {self.threshold}")
        if isinstance(self.max_per_round, bool) or not (isinstance(self.max_per_round, int) and self.max_per_round >= 1):
            raise ValueError(f"select.max_per_round must be a whole number >= 1, got {self.max_per_round!r}")
        if not self.min_distance >= 0:
            raise ValueError(f"select.min_distance must be >= 0 (Å), got {self.min_distance}")
        if self.stop_above is None:
            object.__setattr__(self, "stop_above", 10.0 * self.threshold)
        if not self.stop_above > self.threshold:
            raise ValueError(f"select.stop_above ({self.stop_above} eV/Å) must exceed select.threshold "
                             f"({self.threshold} eV/Å): explorations stop at frames more uncertain than the ones "
                             "they collect")


@dataclass(frozen=True)
class TeacherConfig:
    """The labelling calculator (section ``teacher``): ``module:Class`` or ``file.py:Class``
    with keyword arguments; ``stress: true`` also labels the stress of 3D-periodic frames.
    ``scheduler`` says where the round's frames are labelled, all at once
    (:func:`ase_nemp.jobs.open_executor`): ``serial`` (in this process, one after another),
    ``processes:N`` (N local processes) or a Dask scheduler's address ``tcp://HOST:PORT``."""

    calculator: str
    kwargs: dict = field(default_factory=dict)
    stress: bool = False
    scheduler: str = "serial"  # where the labels are computed: ase_nemp.jobs.open_executor

    def __post_init__(self) -> None:
        if ":" not in str(self.calculator):
            raise ValueError(f"teacher.calculator must look like 'package.module:Class' or 'path/file.py:Class', "
                             f"not {self.calculator!r}")
        from ..jobs import check_spec

        try:
            check_spec(self.scheduler)
        except ValueError as err:
            raise ValueError(f"teacher.scheduler: {err}") from None


@dataclass(frozen=True)
class LearnConfig:
    """A whole active-learning run."""

    data: DataConfig
    start: str
    teacher: TeacherConfig
    explore: tuple[Exploration, ...]
    select: SelectConfig = field(default_factory=SelectConfig)
    rounds: int = 5
    finetune: dict = field(default_factory=dict)
    monitor: str | None = None
    dtype: str = "float64"
    output_dir: str = "runs/learn"
    base_dir: str = "."

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base_dir: str | Path = ".") -> "LearnConfig":
        sections = {"data", "start", "teacher", "explore", "select", "rounds", "finetune", "monitor", "dtype", "output"}
        unknown = sorted(set(raw) - sections)
        if unknown:
            raise ValueError(f"unknown section(s) {unknown}; sections are {sorted(sections)}")
        for needed in ("data", "start", "teacher", "explore"):
            if not raw.get(needed):
                raise ValueError(f"the learning config needs a '{needed}' section")
        base = Path(base_dir).resolve()

        def resolve(p):
            if p is None:
                return None
            if isinstance(p, (list, tuple)):
                return [resolve(q) for q in p]
            if not isinstance(p, (str, os.PathLike)):
                return p  # a value the field checks refuse with its name
            return str(p) if Path(p).is_absolute() else str((base / p).resolve())

        data = dict(raw["data"])
        for key in ("train", "valid", "test", "isolated_atoms"):
            if key in data:
                data[key] = resolve(data[key])
        teacher = dict(raw["teacher"]) if isinstance(raw["teacher"], Mapping) else {"calculator": raw["teacher"]}
        spec = str(teacher.get("calculator", ""))
        module, _, name = spec.rpartition(":")
        if module.endswith(".py"):
            teacher["calculator"] = f"{resolve(module)}:{name}"
        explore = raw["explore"]
        if not isinstance(explore, (list, tuple)):
            raise ValueError("'explore' must be a list of explorations")
        finetune = dict(raw.get("finetune") or {})
        forbidden = sorted({"init_from", "committee"} & set(finetune))
        if forbidden:
            raise ValueError(f"finetune sets {forbidden} itself (the current committee); leave them out")
        _strict(TrainConfig, finetune, "finetune")  # the keys and values must make a valid training section
        output = dict(raw.get("output") or {})
        rounds = raw.get("rounds", 5)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
        return cls(
            data=_strict(DataConfig, data, "data"),
            start=resolve(raw["start"]),
            teacher=_strict(TeacherConfig, teacher, "teacher"),
            explore=tuple(Exploration.from_dict(e, k, resolve) for k, e in enumerate(explore)),
            select=_strict(SelectConfig, dict(raw.get("select") or {}), "select"),
            rounds=rounds,
            finetune=finetune,
            monitor=resolve(raw.get("monitor")),
            dtype=_dtype(raw.get("dtype", "float64")),
            output_dir=resolve(output.get("dir", "runs/learn")),
            base_dir=str(base),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LearnConfig":
        return cls.from_dict(read_yaml(path), base_dir=Path(path).parent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": dataclasses.asdict(self.data), "start": self.start, "teacher": dataclasses.asdict(self.teacher),
            "explore": [{"kind": e.kind, "name": e.name, **e.settings} for e in self.explore],
            "select": dataclasses.asdict(self.select), "rounds": self.rounds, "finetune": dict(self.finetune),
            "monitor": self.monitor, "dtype": self.dtype, "output": {"dir": self.output_dir},
        }
