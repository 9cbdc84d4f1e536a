"""Stage-1 student training from a teacher store: loader, student, KD losses, trainer.

Public face used by evaluation and workflows:

- :func:`compute_fbank` - the student's input features (80-bin, 100 Hz);
- :class:`Student` / :class:`StudentOutput` / :class:`StudentConfig`;
- :func:`load_student` - model and config from a checkpoint;
- :func:`average_checkpoints` - the mean weights of several checkpoints.
"""

from mt2kd.train._checkpoint import average_checkpoints, load_student
from mt2kd.train._config import StudentConfig, TrainConfig
from mt2kd.train._features import compute_fbank
from mt2kd.train._model import Student, StudentOutput

__all__ = [
    "Student",
    "StudentConfig",
    "StudentOutput",
    "TrainConfig",
    "average_checkpoints",
    "compute_fbank",
    "load_student",
]
