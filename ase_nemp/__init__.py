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
]


def __getattr__(name: str):
    # these build on ase.mep / ase.optimize, which take most of a second to import
    if name == "BatchedNEB":
        from .neb import BatchedNEB

        return BatchedNEB
    if name == "relax_many":
        from .relax import relax_many

        return relax_many
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
