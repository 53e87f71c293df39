"""Build an :class:`~ase_nemp.NEMP` from parameters in the NEMP authors' layout.

The layout is the one of ``design/parity/README.md``: flat arrays named
``MLP_pair.W_in``, ``K_0.W_b0_l1``, ``Omega``, ``w_path``, ... with raw weights of shape
(fan_in, fan_out), and hyperparameters under the names of the spec (section 1.2).
This is the first step toward loading models trained with the authors' code.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
import torch

from .model import NEMP, NEMPConfig
from .model.mlp import ScaledMLP

__all__ = ["from_reference", "config_from_reference"]

_CONFIG_KEYS = (
    "cutoff", "sh_lmax", "feat_lmax", "num_channels", "num_layers", "num_radial", "pair_dim",
    "envelope_p", "pair_mlp", "edge_mlp", "coeff_mlp", "readout_mlp", "use_feature_norm",
    "readout_bias", "pair_input", "eps",
)


def config_from_reference(hyperparameters: Mapping[str, Any] | str) -> NEMPConfig:
    """:class:`NEMPConfig` from the reference hyperparameters (a mapping or JSON text)."""
    hp = json.loads(hyperparameters) if isinstance(hyperparameters, str) else dict(hyperparameters)
    missing = [k for k in ("species_z",) + _CONFIG_KEYS if k not in hp]
    if missing:
        raise ValueError(f"reference hyperparameters lack {missing}")
    # the reference model has no isolated-atom switch and no ZBL term
    return NEMPConfig(species=tuple(int(z) for z in hp["species_z"]), isolated_atom_switch=None, zbl=False,
                      **{k: hp[k] for k in _CONFIG_KEYS})


def _load_mlp(mlp: ScaledMLP, arrays: Mapping[str, np.ndarray], prefix: str, used: set[str]) -> None:
    def take(key: str) -> torch.Tensor:
        name = f"{prefix}.{key}"
        if name not in arrays:
            raise KeyError(f"reference parameters lack {name!r}")
        used.add(name)
        return torch.as_tensor(np.asarray(arrays[name]), dtype=torch.float64)

    spec = mlp.spec
    hidden = [f"b{b}_l{k}" for b in range(spec.blocks) for k in range(spec.layers)]
    mlp.w_out.copy_(take("W_out"))
    if mlp.b_out is not None:
        mlp.b_out.copy_(take("b_out"))
    if spec.linear:
        return
    mlp.w_in.copy_(take("W_in"))
    mlp.w_hidden.copy_(torch.stack([take(f"W_{h}") for h in hidden]))
    if mlp.bias:
        mlp.b_in.copy_(take("b_in"))
        mlp.b_hidden.copy_(torch.stack([take(f"b_{h}") for h in hidden]))


def from_reference(
    arrays: Mapping[str, np.ndarray],
    hyperparameters: Mapping[str, Any] | str,
    dtype: torch.dtype = torch.float64,
) -> NEMP:
    """Build an NEMP model whose parameters are those of the reference layout.

    Parameters
    ----------
    arrays : mapping of name -> array
        Parameters as in ``design/parity`` (an ``np.load``-ed ``.npz`` works): the MLPs
        ``MLP_pair``, ``MLP_freq``, ``MLP_pw``, ``MLP_edge``, ``K_0..K_T``,
        ``M_0..M_{T-1}``, ``MLP_out``, and ``W_sp``, ``Omega``, ``w_path``, ``a``, ``b``,
        ``sigma_F``, ``e_bar``.
    hyperparameters : mapping or JSON text
        Spec names (``cutoff``, ``sh_lmax``, ..., ``species_z``).
    dtype : torch.dtype
        dtype of the returned model.

    Returns
    -------
    NEMP whose per-atom energies are the reference's plus ``e_bar`` (the reference adds
    N * e_bar in its calculator; here it is the per-species reference energy).
    """
    cfg = config_from_reference(hyperparameters)
    model = NEMP(cfg, dtype=torch.float64)
    used: set[str] = set()

    def arr(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in arrays:
            raise KeyError(f"reference parameters lack {name!r}")
        used.add(name)
        t = torch.as_tensor(np.asarray(arrays[name]), dtype=torch.float64)
        if tuple(t.shape) != shape:
            raise ValueError(f"reference array {name!r} has shape {tuple(t.shape)}, expected {shape}")
        return t

    S, C, T, n_paths = cfg.num_species, cfg.num_channels, cfg.num_layers, len(model.paths)
    with torch.no_grad():
        for mlp, prefix in [
            (model.pair_mlp, "MLP_pair"), (model.freq_mlp, "MLP_freq"), (model.pw_mlp, "MLP_pw"),
            (model.edge_mlp, "MLP_edge"), (model.readout, "MLP_out"),
        ]:
            _load_mlp(mlp, arrays, prefix, used)
        for t, mlp in enumerate(model.coeff_mlps):
            _load_mlp(mlp, arrays, f"K_{t}", used)
        for t, mlp in enumerate(model.layer_mlps):
            _load_mlp(mlp, arrays, f"M_{t}", used)
        model.w_sp.copy_(arr("W_sp", (S, C, C)))
        model.omega.copy_(arr("Omega", (T, S, 3, C, C)))
        model.path_weights.copy_(arr("w_path", (T, n_paths, S, C)))
        model.scale.copy_(arr("a", (S,)))
        model.shift.copy_(arr("b", (S,)))
        model.set_reference_energies(float(arr("e_bar", ())), float(arr("sigma_F", ())))
    if "paths" in arrays:
        given = [tuple(int(v) for v in p) for p in np.asarray(arrays["paths"])]
        if given != model.paths:
            raise ValueError(f"reference path order {given} differs from this model's {model.paths}")
    weights = {k for k in arrays if "." in k and k.split(".")[0].startswith(("MLP_", "K_", "M_"))}
    unused = sorted(weights - used)
    if unused:
        raise ValueError(f"reference parameters not used by this configuration: {unused}")
    return model.to(dtype)
