"""Model files: ``save(model, path, **metadata)`` and ``load(path, device=..., dtype=...)``.

A model file is one ``torch.save`` dictionary of plain data and tensors::

    {"format": "ase-nemp-model", "format_version": 2, "package_version": "...",
     "torch_version": "...", "architecture": "nemp", "config": {...NEMPConfig.to_dict()...},
     "committee_size": None or M, "species": [1, 8], "atomic_energies": [...],
     "force_rms": ..., "units": "eV, Å", "dtype": "float64", "metadata": {...},
     "state_dict": {...}, "checksum": "sha256 of everything above that defines the model"}

It is read with ``torch.load(weights_only=True)`` (no code can run). Before a model is
built, what the file claims is checked against what it holds: the checksum (a file edited
after it was written is refused), the species, the dtype, finite floating-point weights,
and the shape of every tensor against a model built from the stored config on PyTorch's
``meta`` device (so an edited size cannot make the loader allocate memory). Then the
state dict is loaded strictly. A committee file (``committee_size`` M) holds the state
dict of a :class:`~ase_nemp.model.Committee` of M members with one config.

Format version 1 (before committees) had no architecture, committee or checksum entries
and no isolated-atom switch; such files load as the single NEMP model they describe.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .files import atomic_write
from .model import ARCHITECTURES, AtomisticModel, Committee, ModelConfig, config_class, model_class

__all__ = ["save", "load", "read_model_file", "resolve_dtype", "ModelFileError", "FORMAT_VERSION"]

FORMAT_NAME = "ase-nemp-model"
FORMAT_VERSION = 2


class ModelFileError(ValueError):
    """A model file that is corrupt, truncated, foreign, edited or too new."""


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


def _checksum(payload: dict[str, Any]) -> str:
    """SHA-256 over the entries that define the model: header fields and every tensor."""
    h = hashlib.sha256()
    head = {k: payload.get(k) for k in ("architecture", "config", "committee_size", "species", "dtype")}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(model: AtomisticModel | Committee, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write a model or a committee to ``path`` atomically (temporary file, then rename).

    Parameters
    ----------
    model : a model of any architecture, or a Committee
    path : path-like
    **metadata
        Plain values (str, numbers, lists, dicts) stored under ``"metadata"``, e.g. the
        training data's name or validation errors.
    """
    cfg = model.config
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "architecture": model.architecture,
        "config": cfg.to_dict(),
        "committee_size": model.size if model.is_committee else None,
        "species": list(cfg.species),
        "atomic_energies": model.atomic_energies.tolist(),
        "force_rms": float(model.force_rms),
        "units": "energy eV, length Å",
        "dtype": str(model.dtype).replace("torch.", ""),
        "metadata": _plain(metadata),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    payload["checksum"] = _checksum(payload)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the raw dictionary of a model file (no model is built)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a directory, not a model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {str(path)!r} is empty (0 bytes)")
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
            f"PyTorch file ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]})"
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


def _config_of(payload: dict[str, Any], path: Path) -> tuple[str, ModelConfig]:
    architecture = payload.get("architecture", "nemp")
    if architecture not in ARCHITECTURES:
        raise ModelFileError(f"{str(path)!r} holds a model of architecture {architecture!r}, which this ase-nemp "
                             f"{__version__} does not know (it knows {', '.join(ARCHITECTURES)})")
    raw = payload["config"]
    if not isinstance(raw, dict):
        raise ModelFileError(f"{str(path)!r}: the stored configuration is not a mapping")
    raw = dict(raw)
    if payload["format_version"] < 2:  # written before the isolated-atom switch existed
        raw.setdefault("isolated_atom_switch", None)
    try:
        return architecture, config_class(architecture).from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{str(path)!r} holds an invalid model configuration: {err}") from err


def _check_contents(payload: dict[str, Any], architecture: str, config: ModelConfig,
                    path: Path) -> tuple[torch.dtype, int | None]:
    """What the file claims against what it holds; returns (dtype, committee size)."""
    name = str(path)
    dtype_name = str(payload.get("dtype", "float64"))
    if dtype_name not in ("float32", "float64"):
        raise ModelFileError(f"{name!r} claims dtype {dtype_name!r}; model files hold float32 or float64")
    dtype = getattr(torch, dtype_name)
    if payload["format_version"] >= 2:
        if payload.get("checksum") != _checksum(payload):
            raise ModelFileError(f"{name!r} was modified after it was written (its checksum does not match its "
                                 "contents); refusing to load it. Write model files with ase_nemp.save only.")
    if "species" in payload and [int(z) for z in payload["species"]] != list(config.species):
        raise ModelFileError(f"{name!r}: the species list {payload['species']} disagrees with the configuration's "
                             f"{list(config.species)}")
    size = payload.get("committee_size")
    if size is not None and (not isinstance(size, int) or size < 2):
        raise ModelFileError(f"{name!r}: invalid committee_size {size!r}")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{name!r}: the state dict must map names to tensors")
    for key, t in state.items():
        if t.dtype not in (torch.float32, torch.float64):
            raise ModelFileError(f"{name!r}: tensor {key!r} has dtype {t.dtype}; weights must be float32 or float64")
        if not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{name!r}: tensor {key!r} holds NaN or infinite values")
    # the committee size against the members whose tensors are stored, before anything is built
    # (a size edited to 1e9 would otherwise build a billion members, even on the meta device)
    stored = {int(k.split(".")[1]) for k in state if k.startswith("members.") and k.split(".")[1].isdigit()}
    if (size or 0) != len(stored) or (size and stored != set(range(size))):
        have = f"tensors of {len(stored)} members" if stored else "the tensors of a single model"
        raise ModelFileError(f"{name!r}: committee_size {size!r} disagrees with the stored tensors ({have})")
    # shapes against a model built on the meta device: nothing is allocated for the claimed sizes
    with torch.device("meta"):
        template = _build(architecture, config, dtype, size)
    expected = {k: tuple(v.shape) for k, v in template.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{name!r}: parameters do not match the stored configuration (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise ModelFileError(f"{name!r}: tensor shapes disagree with the stored configuration: {'; '.join(wrong[:5])}")
    e0_key = "members.0.atomic_energies" if size else "atomic_energies"
    claimed = payload.get("atomic_energies")
    if claimed is not None and not torch.allclose(torch.tensor(claimed, dtype=torch.float64),
                                                  state[e0_key].double(), rtol=0.0, atol=1e-9):
        raise ModelFileError(f"{name!r}: the reference energies in the header disagree with the stored tensors")
    return dtype, size


def _build(architecture: str, config: ModelConfig, dtype: torch.dtype, size: int | None) -> AtomisticModel | Committee:
    cls = model_class(architecture)
    if size:
        return Committee([cls(config, dtype=dtype) for _ in range(size)])
    return cls(config, dtype=dtype)


def load(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> AtomisticModel | Committee:
    """Load a model or a committee written by :func:`save`.

    Parameters
    ----------
    path : path-like
    device : str or torch.device
    dtype : "float32", "float64", torch dtype, or None for the dtype it was saved in.

    Returns
    -------
    The model (its architecture's class; a Committee for a committee file) in eval mode. Its ``metadata`` attribute holds
    the stored metadata. Raises :class:`ModelFileError` for a file that is corrupt, edited,
    inconsistent, of an unknown architecture or from a newer version.
    """
    path = Path(path)
    payload = read_model_file(path)
    architecture, config = _config_of(payload, path)
    saved_dtype, size = _check_contents(payload, architecture, config, path)
    model = _build(architecture, config, saved_dtype, size)
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
