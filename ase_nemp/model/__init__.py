"""The NEMP model: configuration, network, committees, and energy derivatives.

This layer depends on torch, on numpy (Clebsch-Gordan tables, reference energies) and,
for element tables only (symbols, covalent radii for the ZBL switch), on ``ase.data``.
It knows nothing of ASE's atoms or calculators, of neighbour lists or of training:
those layers build on it (``tests/test_package.py`` checks its imports).
"""

from .base import AtomisticModel
from .committee import Committee, committee_energy_forces_stress, committee_statistics
from .config import MLPSpec, ModelConfig, NEMPConfig, PRESETS
from .derivatives import energy_forces_stress
from .equireann import EquiREANN, EquiREANNConfig
from .leignn import LEIGNN, LEIGNNConfig
from .nemp import NEMP
from .registry import ARCHITECTURES, config_class, create_model, model_class

__all__ = ["NEMP", "NEMPConfig", "MLPSpec", "PRESETS", "energy_forces_stress", "Committee",
           "committee_energy_forces_stress", "committee_statistics", "AtomisticModel", "ModelConfig",
           "EquiREANN", "EquiREANNConfig", "LEIGNN", "LEIGNNConfig", "ARCHITECTURES", "create_model", "config_class", "model_class"]
