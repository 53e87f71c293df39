"""Training and evaluation (``nemp train``, ``nemp eval``). The model and calculator never import this."""

from .config import DataConfig, RunConfig, TrainConfig
from ..files import read_structures
from .data import LabelKeys, fit_atomic_energies, isolated_atom_energies
from .evaluate import evaluate, format_table, predictions
from .trainer import Trainer, TrainingInterrupted, train

__all__ = [
    "RunConfig", "DataConfig", "TrainConfig", "LabelKeys", "Trainer", "TrainingInterrupted", "train",
    "evaluate", "predictions", "format_table", "fit_atomic_energies", "isolated_atom_energies", "read_structures",
]
