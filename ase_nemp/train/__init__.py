"""Training and evaluation (``nemp train``, ``nemp eval``). The model and calculator never import this."""

from .config import DataConfig, RunConfig, TrainConfig
from ..files import read_structures
from .data import LabelKeys, fit_atomic_energies, isolated_atom_energies
from .evaluate import evaluate, format_table, predictions
from .committee import CommitteeRun, train, train_committee
from .trainer import Trainer, TrainingInterrupted

__all__ = [
    "RunConfig", "DataConfig", "TrainConfig", "LabelKeys", "Trainer", "TrainingInterrupted", "train", "train_committee",
    "CommitteeRun",
    "evaluate", "predictions", "format_table", "fit_atomic_energies", "isolated_atom_energies", "read_structures",
]
