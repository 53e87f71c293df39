"""ase-nemp: NEMP node-equivariant message-passing potentials in PyTorch, driven from ASE.

Public API::

    NEMPConfig, NEMP            hyperparameters and the torch module (ase_nemp.model)
    energy_forces_stress        forces and stress by autograd
    save, load                  model files (ase_nemp.io)
    convert.from_reference      models from the NEMP authors' parameter layout
    AtomicGraph, build_graph    the batch structure and Atoms -> graph (ase_nemp.nl)
    NEMPCalculator              the ASE calculator

Importing the package has no side effects: no global dtype, environment variables or
downloads.
"""

from . import convert
from ._version import __version__
from .calculator import NEMPCalculator
from .graph import AtomicGraph, collate
from .io import load, save
from .model import NEMP, NEMPConfig, energy_forces_stress
from .nl import NeighbourList, build_graph

__all__ = [
    "__version__",
    "NEMP",
    "NEMPConfig",
    "NEMPCalculator",
    "energy_forces_stress",
    "save",
    "load",
    "convert",
    "AtomicGraph",
    "collate",
    "build_graph",
    "NeighbourList",
]
