"""The NEMP model: configuration, network, committees, and energy derivatives (torch; the
element tables of the configuration come from ``ase.data``)."""

from .committee import Committee, committee_energy_forces_stress, committee_statistics
from .config import MLPSpec, NEMPConfig, PRESETS
from .derivatives import energy_forces_stress
from .nemp import NEMP

__all__ = ["NEMP", "NEMPConfig", "MLPSpec", "PRESETS", "energy_forces_stress", "Committee",
           "committee_energy_forces_stress", "committee_statistics"]
