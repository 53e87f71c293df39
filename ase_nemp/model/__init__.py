"""The NEMP model: configuration, network, and energy derivatives (imports only torch)."""

from .config import MLPSpec, NEMPConfig, PRESETS
from .derivatives import energy_forces_stress
from .nemp import NEMP

__all__ = ["NEMP", "NEMPConfig", "MLPSpec", "PRESETS", "energy_forces_stress"]
