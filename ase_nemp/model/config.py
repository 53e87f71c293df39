"""Hyperparameters of an NEMP model: one frozen dataclass, plus the paper's presets.

Presets (``NEMPConfig.preset(name, species=...)``) reproduce the settings of the
NEMP paper's training details; unstated values follow the authors' example
configurations (N_R = C, pair width 128, envelope exponent 6, per-atom feature
normalisation, no readout bias). Explicit keyword arguments override a preset.

Parameter counts (``NEMP(cfg).num_parameters()``; they depend on the number of
species S through the per-species tables, so S is stated)::

    preset        species (S)                parameters
    water         H, O (2)                      122,172
    water-small   H, O (2)                       87,608
    3bpa          H, C, N, O (4)              1,348,104
    ani1x         H, C, N, O (4)              1,502,760
    hme21         37 elements, Z = 1-37 (37)    673,194
    emlp          H, C, O, Pd, Ag (5)           566,122

The paper quotes "approximately 50k to 500k" parameters. With the reference
architecture (separate coefficient networks K_t and M_t per layer, acting on edge
features that grow by C per layer) the larger presets exceed that: in ``3bpa`` the
linear K_0..K_3 alone hold 516k weights and the three pair networks 250k.

(``benchmarks/model_cost.py`` prints these and the cost of one evaluation.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from ase.data import atomic_numbers as _ATOMIC_NUMBERS
from ase.data import chemical_symbols as _SYMBOLS

__all__ = ["MLPSpec", "ModelConfig", "NEMPConfig", "PRESETS", "parse_species"]


@dataclass(frozen=True)
class MLPSpec:
    """Shape of one scaled MLP (spec section 2.1).

    Attributes
    ----------
    blocks : int
        Number of residual blocks B.
    width : int
        Hidden width F.
    layers : int
        Dense layers per block Lb (2 in all of the paper's settings).
    linear : bool
        If true the MLP is a single dense layer and the other fields are ignored.
    """

    blocks: int = 1
    width: int = 32
    layers: int = 2
    linear: bool = False

    @classmethod
    def parse(cls, value: Any) -> "MLPSpec":
        """Accept an ``MLPSpec``, ``"linear"``, ``[B, F]``, ``[B, F, Lb]``,
        ``[B, F, Lb, linear]`` (the reference's layout) or a mapping of the fields."""
        if isinstance(value, MLPSpec):
            return value
        if isinstance(value, str):
            if value.strip().lower() == "linear":
                return cls(linear=True)
            raise ValueError(f"MLP spec string must be 'linear', got {value!r}")
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown MLP spec keys {sorted(unknown)}")
            return cls(**value)
        if isinstance(value, Sequence) and 2 <= len(value) <= 4:
            b, f, *rest = value
            lb = int(rest[0]) if rest else 2
            lin = bool(rest[1]) if len(rest) > 1 else False
            return cls(int(b), int(f), lb, lin)
        raise ValueError(
            f"cannot read an MLP spec from {value!r}; use 'linear', [blocks, width], "
            "[blocks, width, layers] or [blocks, width, layers, linear]"
        )

    def __str__(self) -> str:
        return "linear" if self.linear else f"{self.blocks}x({self.width})x{self.layers}"


def _deep(blocks: int, width: int) -> MLPSpec:
    return MLPSpec(blocks, width, 2, False)


_LINEAR = MLPSpec(linear=True)

# Paper, "Training details" (see design/nemp-model.md section 6.1).
PRESETS: dict[str, dict[str, Any]] = {
    "water": dict(
        num_layers=3, num_channels=8, sh_lmax=2, feat_lmax=2, cutoff=4.5,
        pair_mlp=_deep(2, 64), edge_mlp=_deep(1, 32), coeff_mlp=_deep(1, 32), readout_mlp=_deep(2, 32),
    ),
    "water-small": dict(
        num_layers=2, num_channels=4, sh_lmax=2, feat_lmax=2, cutoff=4.5,
        pair_mlp=_deep(2, 64), edge_mlp=_deep(1, 16), coeff_mlp=_deep(1, 16), readout_mlp=_deep(2, 32),
    ),
    "3bpa": dict(
        num_layers=3, num_channels=64, sh_lmax=3, feat_lmax=2, cutoff=6.0,
        pair_mlp=_deep(2, 128), edge_mlp=_LINEAR, coeff_mlp=_LINEAR, readout_mlp=_LINEAR,
    ),
    "ani1x": dict(
        num_layers=3, num_channels=32, sh_lmax=3, feat_lmax=2, cutoff=6.0,
        pair_mlp=_deep(2, 128), edge_mlp=_deep(2, 128), coeff_mlp=_deep(2, 128), readout_mlp=_deep(2, 256),
    ),
    "hme21": dict(
        num_layers=3, num_channels=16, sh_lmax=2, feat_lmax=2, cutoff=6.0,
        pair_mlp=_deep(2, 128), edge_mlp=_deep(2, 64), coeff_mlp=_deep(2, 64), readout_mlp=_deep(2, 128),
    ),
    "emlp": dict(
        num_layers=3, num_channels=16, sh_lmax=2, feat_lmax=2, cutoff=5.0,
        pair_mlp=_deep(2, 128), edge_mlp=_deep(2, 64), coeff_mlp=_deep(2, 64), readout_mlp=_deep(2, 128),
    ),
}

_PAIR_INPUTS = ("one_hot", "atomic_number")


def parse_species(species: Iterable[int | str]) -> tuple[int, ...]:
    """Atomic numbers or symbols -> sorted tuple of atomic numbers (checked)."""
    out = []
    for s in species:
        if isinstance(s, str):
            if s not in _ATOMIC_NUMBERS:
                raise ValueError(f"unknown chemical symbol {s!r} in species")
            out.append(_ATOMIC_NUMBERS[s])
        else:
            z = int(s)
            if not 1 <= z < len(_SYMBOLS):
                raise ValueError(f"atomic number {s!r} in species is out of range")
            out.append(z)
    if len(set(out)) != len(out):
        raise ValueError(f"species list has duplicates: {list(species)}")
    if not out:
        raise ValueError("species list is empty; give the elements the model should know")
    return tuple(sorted(out))


@dataclass(frozen=True)
class ModelConfig:
    """What the config dataclasses of all architectures share: ``species`` (sorted atomic
    numbers), ``cutoff`` (Å), the guard ``eps`` and the fields of the limits that hold for
    every architecture (:mod:`ase_nemp.model.limits`: ``isolated_atom_switch``, ``zbl``,
    ``zbl_radius_scale``), presets and plain-dict conversion. A subclass sets ``PRESETS``
    (name -> field values) and may change the defaults."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    species: tuple[int, ...] = field(default=(1, 8))
    cutoff: float = 5.0
    eps: float = 1e-6
    isolated_atom_switch: float | None = 0.5
    zbl: bool = False
    zbl_radius_scale: float = 0.6

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """Build a config from a named preset, then apply ``overrides``.

        >>> cfg = NEMPConfig.preset("water-small", species=["H", "O"])
        >>> cfg.num_channels, cfg.num_layers, cfg.cutoff
        (4, 2, 4.5)
        """
        key = name.lower().replace("_", "-")
        if key not in cls.PRESETS:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; available: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[key], **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Inverse of :meth:`to_dict`; unknown keys are an error (names are listed)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (ints, floats, strings, lists, dicts) for files and YAML."""
        out = dataclasses.asdict(self)
        out["species"] = list(self.species)
        return out

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def _shared_problems(self) -> list[str]:
        """Normalise and check the fields every architecture has: ``species`` (sorted
        atomic numbers), ``cutoff`` and ``eps`` (positive floats) and those of
        :mod:`ase_nemp.model.limits` (``isolated_atom_switch``, ``zbl``,
        ``zbl_radius_scale``). Returns the problems found, for the subclass's message."""
        set_ = object.__setattr__
        set_(self, "species", parse_species(self.species))
        set_(self, "cutoff", float(self.cutoff))
        set_(self, "eps", float(self.eps))
        problems = []
        if not self.cutoff > 0:
            problems.append(f"cutoff must be positive (got {self.cutoff})")
        if not self.eps > 0:
            problems.append("eps must be positive")
        if self.isolated_atom_switch is not None:
            set_(self, "isolated_atom_switch", float(self.isolated_atom_switch))
            if not self.isolated_atom_switch > 0:
                problems.append(f"isolated_atom_switch must be positive or None (got {self.isolated_atom_switch})")
        if not isinstance(self.zbl, bool):
            problems.append(f"zbl must be true or false (got {self.zbl!r})")
        set_(self, "zbl_radius_scale", float(self.zbl_radius_scale))
        if not 0.0 < self.zbl_radius_scale <= 2.0:
            problems.append(f"zbl_radius_scale must be in (0, 2] (got {self.zbl_radius_scale})")
        return problems

    @property
    def num_species(self) -> int:
        return len(self.species)

    @property
    def symbols(self) -> list[str]:
        return [_SYMBOLS[z] for z in self.species]


@dataclass(frozen=True)
class NEMPConfig(ModelConfig):
    """Every hyperparameter of an NEMP model (names of design/nemp-model.md section 1.2).

    Attributes
    ----------
    species : tuple of int
        Atomic numbers the model knows, stored sorted; species index = position in
        this tuple. Symbols are accepted on construction.
    cutoff : float
        Radial cutoff r_c in Å.
    sh_lmax : int
        L: largest degree of the spherical harmonics and of the harmonic density A.
    feat_lmax : int
        l: largest degree of the node-equivariant features and of the tensor-product
        output (must be <= ``sh_lmax``).
    num_channels : int
        C: channels of every feature.
    num_layers : int
        T: message-passing layers.
    num_radial : int or None
        N_R: sinc radial functions; ``None`` means ``num_channels``.
    pair_dim : int
        P: width of the pair-species embedding.
    envelope_p : int
        Exponent p of the polynomial cutoff envelope (used squared).
    pair_mlp, edge_mlp, coeff_mlp, readout_mlp : MLPSpec
        Shapes of the pair-embedding, initial edge, per-layer coefficient and readout
        networks. ``pair_mlp`` is never linear.
    use_feature_norm : bool
        Per-atom RMS normalisation of the equivariant features after each layer.
    readout_bias : bool
        Biases in the readout MLP.
    pair_input : {"one_hot", "atomic_number"}
        Input of the pair embedding: one-hot(a) + one-hot(b), or (Z_a, Z_b) as floats.
    eps : float
        The regulariser epsilon_0 used everywhere (lengths, harmonics, coordination).
    isolated_atom_switch : float or None
        n_s of the isolated-atom limit (:mod:`ase_nemp.model.limits`): the network part of
        an atom's energy is multiplied by a smooth switch of its coordination that is 0
        without neighbours and 1 from ``n_s`` on, so an atom alone has exactly its
        reference energy. ``None`` turns it off (the NEMP authors' model; model files
        written before this option load that way).
    zbl : bool
        Add the ZBL screened nuclear repulsion for pairs closer than ``zbl_radius_scale``
        times the sum of their covalent radii (:mod:`ase_nemp.model.limits`).
    zbl_radius_scale : float
        Where ZBL switches off, as a fraction of the sum of the covalent radii (0.6;
        MACE uses 1.0, which overlaps with the bonds themselves).
    """

    species: tuple[int, ...] = field(default=(1, 8))
    cutoff: float = 5.0
    sh_lmax: int = 2
    feat_lmax: int = 2
    num_channels: int = 16
    num_layers: int = 3
    num_radial: int | None = None
    pair_dim: int = 128
    envelope_p: int = 6
    pair_mlp: MLPSpec = field(default_factory=lambda: _deep(2, 128))
    edge_mlp: MLPSpec = field(default_factory=lambda: _deep(2, 64))
    coeff_mlp: MLPSpec = field(default_factory=lambda: _deep(2, 64))
    readout_mlp: MLPSpec = field(default_factory=lambda: _deep(2, 128))
    use_feature_norm: bool = True
    readout_bias: bool = False
    pair_input: str = "one_hot"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("pair_mlp", "edge_mlp", "coeff_mlp", "readout_mlp"):
            set_(self, name, MLPSpec.parse(getattr(self, name)))
        if self.num_radial is None:
            set_(self, "num_radial", self.num_channels)
        problems = self._shared_problems()
        if self.sh_lmax < 0 or self.feat_lmax < 0:
            problems.append("sh_lmax and feat_lmax must be >= 0")
        if self.feat_lmax > self.sh_lmax:
            problems.append(f"feat_lmax ({self.feat_lmax}) must not exceed sh_lmax ({self.sh_lmax})")
        for name in ("num_channels", "num_layers", "num_radial", "pair_dim", "envelope_p"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.pair_mlp.linear:
            problems.append("pair_mlp cannot be linear")
        if self.pair_input not in _PAIR_INPUTS:
            problems.append(f"pair_input must be one of {_PAIR_INPUTS} (got {self.pair_input!r})")
        if problems:
            raise ValueError("invalid NEMPConfig: " + "; ".join(problems))


NEMPConfig.PRESETS = PRESETS
