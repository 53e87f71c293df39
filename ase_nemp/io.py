"""Model files: ``save(model, path, **metadata)`` and ``load(path, device=..., dtype=...)``.

A model file is one ``torch.save`` dictionary of plain data and tensors::

    {"format": "ase-nemp-model", "format_version": 1, "package_version": "...",
     "torch_version": "...", "config": {...NEMPConfig.to_dict()...},
     "species": [1, 8], "atomic_energies": [...], "force_rms": ..., "units": "eV, Å",
     "dtype": "float64", "metadata": {...}, "state_dict": {...}}

It is read with ``torch.load(weights_only=True)`` (no code can run) and the state dict
is loaded strictly into a model rebuilt from the stored config.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .model import NEMP, NEMPConfig

__all__ = ["save", "load", "read_model_file", "resolve_dtype", "ModelFileError", "FORMAT_VERSION"]

FORMAT_NAME = "ase-nemp-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that is corrupt, truncated, foreign or too new."""


def _plain(value: Any) -> Any:
    """Check that metadata survives ``weights_only`` loading (plain containers only)."""
    if isinstance(value, (str, int, float, bool, type(None), torch.Tensor)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return value.item()
    if hasattr(value, "tolist"):  # numpy array
        return value.tolist()
    raise TypeError(f"metadata value of type {type(value).__name__} cannot be stored; use plain types")


def save(model: NEMP, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename).

    Parameters
    ----------
    model : NEMP
    path : path-like
    **metadata
        Plain values (str, numbers, lists, dicts) stored under ``"metadata"``, e.g. the
        training data's name or validation errors.
    """
    path = Path(path)
    cfg = model.config
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "config": cfg.to_dict(),
        "species": list(cfg.species),
        "atomic_energies": model.atomic_energies.tolist(),
        "force_rms": float(model.force_rms),
        "units": "energy eV, length Å",
        "dtype": str(model.dtype).replace("torch.", ""),
        "metadata": _plain(metadata),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the raw dictionary of a model file (no model is built)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a directory, not a model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise ModelFileError(f"cannot read model file {str(path)!r}: it is corrupt ({str(err)[:200]})") from err
        raise ModelFileError(
            f"{str(path)!r} holds Python objects other than plain data and tensors; refusing to load it "
            "(model files are read with weights_only=True so that they cannot run code)"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, IndexError, ... on bad bytes
        size = path.stat().st_size
        raise ModelFileError(
            f"cannot read model file {str(path)!r} ({size} bytes): it is truncated, corrupt, or not a "
            f"PyTorch file ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        kind = type(payload).__name__
        raise ModelFileError(
            f"{str(path)!r} is a PyTorch file but not an ase-nemp model file (it holds a {kind} without "
            f"format tag {FORMAT_NAME!r}); save models with ase_nemp.save"
        )
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{str(path)!r} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} uses model-file format version {version}, written by ase-nemp "
            f"{payload.get('package_version', '?')}; this ase-nemp {__version__} reads format versions up to "
            f"{FORMAT_VERSION}. Upgrade ase-nemp to load it."
        )
    missing = [k for k in ("config", "state_dict") if k not in payload]
    if missing:
        raise ModelFileError(f"{str(path)!r} lacks the entries {missing}; the file is incomplete")
    return payload


def load(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> NEMP:
    """Load a model written by :func:`save`.

    Parameters
    ----------
    path : path-like
    device : str or torch.device
    dtype : "float32", "float64", torch dtype, or None for the dtype it was saved in.

    Returns
    -------
    NEMP in eval mode. Its ``metadata`` attribute holds the stored metadata.
    """
    payload = read_model_file(path)
    try:
        config = NEMPConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{str(path)!r} holds an invalid model configuration: {err}") from err
    saved_dtype = getattr(torch, str(payload.get("dtype", "float64")), torch.float64)
    model = NEMP(config, dtype=saved_dtype)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise ModelFileError(
            f"{str(path)!r}: parameters do not match the stored configuration: {str(err)[:500]}"
        ) from err
    model.metadata = dict(payload.get("metadata") or {})
    model.eval()
    return model.to(device=device, dtype=resolve_dtype(dtype) if dtype is not None else None)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or a torch dtype) to a torch floating dtype."""
    if isinstance(dtype, torch.dtype):
        result = dtype
    else:
        result = {"float32": torch.float32, "float64": torch.float64, "single": torch.float32,
                  "double": torch.float64}.get(str(dtype).replace("torch.", ""))
        if result is None:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if result not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {result}")
    return result
