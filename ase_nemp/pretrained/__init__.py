"""Models shipped with ase-nemp.

>>> from ase_nemp import pretrained
>>> pretrained.available()          # name -> one-line description
>>> calc = NEMPCalculator.from_pretrained("pd-co-o", dtype="float64")

Each model ``<name>.pt`` sits next to the exact training config (``<name>.yaml``, to
retrain it with ``nemp train``; ``<name>-learn.yaml`` for the active-learning stage of
``nemp learn``) and its held-out metrics (``<name>.metrics.md``).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["available", "model_path", "load", "files"]

_HERE = Path(__file__).resolve().parent

_MODELS = {
    "pd-co-o": (
        "pd-co-o.pt",
        "CO oxidation on Pd(111): Pd slab and bulk, CO, O, CO2; a committee with uncertainties, refined by active "
        "learning against the public EMLP NequIP potential",
    ),
}


def available() -> dict[str, str]:
    """Shipped models: ``{name: one-line description}``."""
    return {name: desc for name, (fname, desc) in _MODELS.items() if (_HERE / fname).exists()}


def model_path(name: str) -> Path:
    """Path of a shipped model file; unknown names list the available ones."""
    models = available()
    if name not in models:
        listing = "; ".join(f"{k}: {v}" for k, v in models.items()) or "none"
        raise ValueError(f"no shipped model called {name!r}; available: {listing}")
    return _HERE / _MODELS[name][0]


def files(name: str) -> dict[str, Path]:
    """The model file, its training config and its metrics."""
    path = model_path(name)
    stem = path.with_suffix("")
    return {"model": path, "config": stem.with_suffix(".yaml"), "metrics": Path(f"{stem}.metrics.md")}


def load(name: str, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """Load a shipped model (an :class:`~ase_nemp.NEMP` or a :class:`~ase_nemp.model.Committee`)."""
    from ..io import load as load_file

    return load_file(model_path(name), device=device, dtype=dtype)
