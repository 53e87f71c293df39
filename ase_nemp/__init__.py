"""ase-nemp: NEMP node-equivariant message-passing potentials in PyTorch, driven from ASE.

Public API::

    NEMPConfig, NEMP            hyperparameters and the torch module (ase_nemp.model)
    EquiREANNConfig, EquiREANN  the EquiREANN architecture, behind the same interface
    LEIGNNConfig, LEIGNN        LEIGNN (direct or conservative forces)
    create_model                any architecture by name ("nemp", "equireann", "leignn")
    energy_forces_stress        forces and stress by autograd
    save, load                  model files (ase_nemp.io)
    convert.from_reference      models from the NEMP authors' parameter layout
    AtomicGraph, build_graph    the batch structure and Atoms -> graph (ase_nemp.nl)
    NEMPCalculator              the ASE calculator (calculate_batch: many structures per call)
    BatchedNEB                  ASE's NEB with all moving images in one model call
    relax_many                  ASE optimizers on many structures in lockstep, one call per step
    hessian                     the model's Hessian as ASE's VibrationsData (ase_nemp.vibrations)
    refine_saddle, verify_saddle  saddle search (ASE's dimer or P-RFO) and its check (ase_nemp.saddle)
    elementary_steps            end points -> verified elementary steps with rates (ase_nemp.reaction)
    harmonic_rate               Vineyard's harmonic TST (ase_nemp.rates)

Importing the package has no side effects: no global dtype, environment variables or
downloads.
"""

from . import convert
from ._version import __version__
from .calculator import NEMPCalculator
from .graph import AtomicGraph, collate
from .io import load, save
from .model import (NEMP, LEIGNN, EquiREANN, EquiREANNConfig, LEIGNNConfig, NEMPConfig, create_model,
                    energy_forces_stress)
from .nl import NeighbourList, build_graph

__all__ = [
    "__version__",
    "NEMP",
    "NEMPConfig",
    "EquiREANN",
    "EquiREANNConfig",
    "LEIGNN",
    "LEIGNNConfig",
    "create_model",
    "NEMPCalculator",
    "energy_forces_stress",
    "save",
    "load",
    "convert",
    "AtomicGraph",
    "collate",
    "build_graph",
    "NeighbourList",
    "BatchedNEB",
    "relax_many",
    "hessian",
    "refine_saddle",
    "verify_saddle",
    "elementary_steps",
    "harmonic_rate",
]

_LAZY = {"BatchedNEB": "batched_neb", "relax_many": "relax", "hessian": "vibrations", "refine_saddle": "saddle",
         "verify_saddle": "saddle", "elementary_steps": "reaction", "harmonic_rate": "rates"}


def __getattr__(name: str):
    # these build on ase.mep / ase.optimize / ase.vibrations, which take most of a second to import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
