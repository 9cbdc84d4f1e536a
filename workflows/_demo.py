"""The embedded demo: the bundled corpus, tiny RANDOM teachers, short stage-1 and stage-2 runs, their evaluation.

Everything it writes stays under one folder ``OUT``: ``teachers/`` (the
random checkpoints), ``data/`` (the manifests with absolute audio paths and
the label list), ``store/``, ``exp/`` (stage-1 checkpoints, TensorBoard),
``exp-finetune/`` (the BPE model and the stage-2 checkpoints),
``report.json`` (teachers and the stage-1 student) and
``student_report.json`` (the fine-tuned student's WER, mAP and EER).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mt2kd.eval import EvalConfig, StudentEvalConfig
from mt2kd.extract import ExtractConfig
from mt2kd.train import AsrConfig, FinetuneConfig, TrainConfig, checkpoint_path
from mt2kd.workflows._config import TOKENIZER_DIR, WorkflowConfig

DEMO_DIR = Path(__file__).resolve().parent / "demo"  # the committed demo corpus
DEMO_MANIFESTS = ("speech_cuts.jsonl.gz", "events_cuts.jsonl.gz")
DEMO_LABELS = "labels.txt"  # the event classes, line order = class index
DEMO_TRAIN_STEPS = 30  # enough for the losses to move on the 100 s corpus; about 15 s on two CPU cores
DEMO_FINETUNE_STEPS = 30  # stage 2: the heads alone for the first 10, then the encoder too (SV branch frozen)
DEMO_BPE_VOCAB = 64  # pieces of the demo's BPE model (six sentences hold few words)
RANDOM_BANNER = ("NOTE: the demo teachers are tiny RANDOM-weight models of the real architectures; "
                 "their outputs show the pipeline working, they are not real teacher labels.")
NUMBERS_MEAN_NOTHING = ("The teachers are RANDOM and the student tiny and briefly trained: these numbers show the "
                        "chain working, they say nothing about the quality of any model (and they are scored on "
                        "the cuts the student trained on).")


def demo_config(out: str | Path, workers: int = 2) -> WorkflowConfig:
    """The demo chain: tiny random teachers, the demo corpus, a LocalCluster, 30 steps of KD, 30 of stage 2, eval.

    The cuts are the copies :func:`write_demo_manifests` puts in ``out/data``.

    Examples
    --------
    >>> demo_config("demo-out").train.num_steps
    30
    """
    out = Path(out)
    teachers_dir = out / "teachers"
    manifests = tuple(str(out / "data" / m) for m in DEMO_MANIFESTS)
    store = str(out / "store")
    teachers = ({"name": "whisper", "checkpoint": str(teachers_dir / "whisper" / "tiny.pt")},
                {"name": "beats", "checkpoint": str(teachers_dir / "beats" / "tiny.pt")},
                {"name": "ecapa", "checkpoint": str(teachers_dir / "ecapa")})
    extract = ExtractConfig.from_dict({
        "cuts": list(manifests), "store": store, "teachers": teachers, "workers": workers, "max_duration": 30.0,
        "shard_hours": 0.01,  # about 36 s of audio per shard: the 100 s demo makes 3 shards, shared by the workers
    })
    train = TrainConfig(
        cuts=manifests, stores=(store,), exp_dir=str(out / "exp"), student="tiny", max_duration=10.0,
        num_buckets=2, buffer_size=100,  # a 44-cut corpus: few buckets, or most batches hold one cut
        num_workers=0,  # two shared cores: forked loader workers cost more than they save here
        num_steps=DEMO_TRAIN_STEPS, lr=3e-3, warmup_steps=10, lr_steps=1000.0,
        log_every=10, checkpoint_every=DEMO_TRAIN_STEPS, keep_last=1, device="cpu",
    )
    evaluation = EvalConfig(cuts=manifests, stores=(store,), checkpoint=str(checkpoint_path(train.exp_dir,
                                                                                           train.num_steps)),
                            labels=str(out / "data" / DEMO_LABELS))
    finetune = _demo_finetune(out, manifests, store, str(evaluation.checkpoint))
    student = StudentEvalConfig(checkpoint=str(checkpoint_path(finetune.exp_dir, finetune.num_steps)),
                                test_sets=tuple(f"{name.split('_')[0]}={m}" for name, m in zip(DEMO_MANIFESTS, manifests)))
    return WorkflowConfig(extract=extract, tiny_teachers=str(teachers_dir), train=train, eval=evaluation,
                          report=str(out / "report.json"), finetune=finetune, bpe_vocab_size=DEMO_BPE_VOCAB,
                          eval_student=student, student_report=str(out / "student_report.json"))


def _demo_finetune(out: Path, manifests: tuple[str, ...], store: str, init: str) -> FinetuneConfig:
    """Stage 2 of the demo: transcripts, event labels and speakers of the demo corpus; the AT KD term kept."""
    exp_dir = out / "exp-finetune"
    return FinetuneConfig(
        cuts=manifests, stores=(store,), exp_dir=str(exp_dir), init=init, tokenizer=str(exp_dir / TOKENIZER_DIR),
        labels=str(out / "data" / DEMO_LABELS), asr=AsrConfig(decoder_dim=32, joiner_dim=32),
        freeze_encoder_steps=DEMO_FINETUNE_STEPS // 3, max_duration=10.0, num_buckets=2, buffer_size=100,
        num_workers=0, num_steps=DEMO_FINETUNE_STEPS, lr=3e-3, warmup_steps=10, lr_steps=1000.0, log_every=10,
        checkpoint_every=DEMO_FINETUNE_STEPS, keep_last=1, device="cpu",
    )


def write_demo_manifests(folder: str | Path) -> tuple[str, ...]:
    """Copy the demo manifests (absolute audio paths) and the label list into ``folder``; returns the manifests.

    The committed manifests name audio relative to their own folder (so the
    corpus works from any checkout); plain lhotse loading, as the trainer and
    eval do, needs absolute paths.

    Examples
    --------
    >>> write_demo_manifests("demo-out/data")  # doctest: +SKIP
    ('demo-out/data/speech_cuts.jsonl.gz', 'demo-out/data/events_cuts.jsonl.gz')
    """
    from lhotse import CutSet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_MANIFESTS:
        cuts = CutSet.from_file(DEMO_DIR / name).with_recording_path_prefix(str(DEMO_DIR))
        cuts.to_file(folder / name)
    shutil.copyfile(DEMO_DIR / DEMO_LABELS, folder / DEMO_LABELS)
    return tuple(str(folder / name) for name in DEMO_MANIFESTS)
