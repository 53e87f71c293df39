"""The architectures by name, and one entry point that builds any of them.

>>> from ase_nemp import create_model
>>> model = create_model("equireann", species=["H", "O"], num_orbitals=16)
>>> model.architecture, model.cutoff
('equireann', 4.0)
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .base import AtomisticModel
from .config import ModelConfig, NEMPConfig
from .equireann import EquiREANN, EquiREANNConfig
from .leignn import LEIGNN, LEIGNNConfig
from .nemp import NEMP

__all__ = ["ARCHITECTURES", "create_model", "config_class", "model_class"]

# name -> (model class, config class)
ARCHITECTURES: dict[str, tuple[type[AtomisticModel], type[ModelConfig]]] = {
    "nemp": (NEMP, NEMPConfig),
    "equireann": (EquiREANN, EquiREANNConfig),
    "leignn": (LEIGNN, LEIGNNConfig),
}


def _entry(architecture: str) -> tuple[type[AtomisticModel], type[ModelConfig]]:
    key = str(architecture).lower()
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[key]


def model_class(architecture: str) -> type[AtomisticModel]:
    return _entry(architecture)[0]


def config_class(architecture: str) -> type[ModelConfig]:
    return _entry(architecture)[1]


def create_model(architecture: str, species: Iterable[int | str], preset: str | None = None, seed: int | None = 0,
                 dtype: torch.dtype = torch.float64, **overrides: Any) -> AtomisticModel:
    """A new model of any architecture with random parameters.

    Parameters
    ----------
    architecture : {"nemp", "equireann", "leignn"}
    species : elements the model knows (symbols or atomic numbers)
    preset : str, optional
        A named preset of the architecture's config (``NEMPConfig.PRESETS``...).
    seed : int or None
        Seed of the initial parameters (the global RNG is left untouched); None draws
        from the global RNG.
    dtype : torch.dtype
    **overrides
        Any field of the architecture's config (for LEIGNN e.g. ``force_mode="conservative"``).
    """
    model_cls, config_cls = _entry(architecture)
    fields = {**overrides, "species": species}
    config = config_cls.preset(preset, **fields) if preset else config_cls(**fields)
    return model_cls(config, dtype=dtype, seed=seed)
