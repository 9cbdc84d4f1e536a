"""Stage-1 student training from a teacher store: loader, student, KD losses, trainer.

Public face used by evaluation and workflows:

- :func:`compute_fbank` - the student's input features (80-bin, 100 Hz);
- :class:`Student` / :class:`StudentOutput` / :class:`StudentConfig`;
- :func:`load_student` - model and config from a checkpoint;
- :func:`average_checkpoints` - the mean weights of several checkpoints;
- :func:`align_frames` - the one rule aligning student and teacher frames;
- :class:`TrainConfig` and :func:`train` - one stage-1 KD run;
- :class:`Tokenizer` / :func:`train_bpe` / :func:`cut_text` - the BPE vocabulary
  of the ASR heads (blank id 0) and the transcript of a cut;
- :class:`AsrConfig` / :class:`AsrHeads` / :func:`transducer_memory_bytes` -
  stateless transducer and CTC heads, their losses and the transducer's memory.

Names resolve on first use, so ``mt2kd train --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Student": "_model",
    "StudentOutput": "_model",
    "StudentConfig": "_config",
    "TrainConfig": "_config",
    "average_checkpoints": "_checkpoint",
    "load_student": "_checkpoint",
    "compute_fbank": "_features",
    "align_frames": "_losses",
    "train": "_trainer",
    "Tokenizer": "_tokenizer",
    "train_bpe": "_tokenizer",
    "cut_text": "_tokenizer",
    "AsrConfig": "_asr",
    "AsrHeads": "_asr",
    "transducer_memory_bytes": "_asr",
    "cut_events": "_labels",
    "cut_speaker": "_labels",
    "events_to_multi_hot": "_labels",
    "load_label_list": "_labels",
    "speaker_list": "_labels",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mt2kd.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mt2kd.train.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
