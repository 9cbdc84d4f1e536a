"""Student training: stage-1 KD from a teacher store, stage-2 multi-task fine-tuning.

Public face used by evaluation and workflows:

- :func:`compute_fbank` - the student's input features (80-bin, 100 Hz);
- :class:`Student` / :class:`StudentOutput` / :class:`StudentConfig`;
- :func:`load_student` - model and config from a checkpoint;
- :func:`average_checkpoints` - the mean weights of several checkpoints;
- :func:`list_checkpoints` / :func:`checkpoint_path` - a run's checkpoints and their names;
- :func:`align_frames` - the one rule aligning student and teacher frames;
- :class:`TrainConfig` and :func:`train` - one stage-1 KD run;
- :class:`FinetuneConfig`, :func:`finetune` and :func:`load_finetuned` - stage-2
  multi-task fine-tuning and the model it leaves (see docs/finetuning.md);
- :func:`cut_events` / :func:`cut_speaker` / :func:`load_label_list` /
  :func:`events_to_multi_hot` / :func:`speaker_list` - what a cut is labelled with;
- :class:`Tokenizer` / :func:`train_bpe` / :func:`cut_text` - the BPE vocabulary
  of the ASR heads (blank id 0) and the transcript of a cut;
- :class:`AsrConfig` / :class:`AsrHeads` / :func:`transducer_memory_bytes` -
  stateless transducer and CTC heads, their losses and the transducer's memory.

Names resolve on first use, so ``mt2kd train --help`` does not import torch.
"""

from __future__ import annotations

from mt2kd._exports import lazy_exports

_WHERE = {
    "Student": "_model",
    "StudentOutput": "_model",
    "StudentConfig": "_config",
    "TrainConfig": "_config",
    "KDTarget": "_targets",
    "checkpoint_path": "_config",
    "average_checkpoints": "_checkpoint",
    "list_checkpoints": "_checkpoint",
    "load_student": "_checkpoint",
    "compute_fbank": "_features",
    "align_frames": "_losses",
    "train": "_trainer",
    "TargetScores": "_target_scores",
    "Tokenizer": "_tokenizer",
    "train_bpe": "_tokenizer",
    "cut_text": "_tokenizer",
    "AsrConfig": "_asr_config",
    "AsrHeads": "_asr",
    "transducer_memory_bytes": "_asr",
    "FinetuneConfig": "_finetune_config",
    "finetune": "_finetune",
    "load_finetuned": "_finetune_model",
    "cut_events": "_labels",
    "cut_speaker": "_labels",
    "events_to_multi_hot": "_labels",
    "load_label_list": "_labels",
    "speaker_list": "_labels",
    "MvqHead": "_mvq",
    "mvq_loss": "_mvq",
    "mvq_cross_entropy": "_mvq",
    "expected_frames": "_mvq",
}

__all__ = sorted(_WHERE)
# no TYPE_CHECKING imports here yet: mypy reads these names as Any, as it always has
__getattr__ = lazy_exports(__name__, _WHERE)
