"""Stage-2 batches: labels with presence masks, and random speaker crops of speaker-only cuts."""

from __future__ import annotations

import torch

from mt2kd.train._finetune_data import FinetuneDataset, LabelSpec, crop_speaker_cuts


def _batch() -> dict:
    lengths = torch.tensor([300, 120, 250])
    fbank = torch.arange(3 * 300 * 2, dtype=torch.float32).reshape(3, 300, 2)
    return {
        "fbank": fbank, "num_frames": lengths,
        "labels": {"texts": ["hello", None, None], "events": torch.ones(3, 4, dtype=torch.bool),
                   "events_present": torch.tensor([True, True, True]), "speakers": torch.tensor([0, 1, 2]),
                   "speaker_only": torch.tensor([False, True, True])},
        "targets": {"whisper": {"values": torch.zeros(3, 80, 8), "lengths": torch.tensor([75, 30, 62]),
                                "present": torch.tensor([True, True, True])},
                    "ecapa": {"values": torch.zeros(3, 4), "present": torch.tensor([True, True, True])}},
    }


def test_only_long_speaker_only_cuts_are_cropped_and_their_other_labels_masked() -> None:
    torch.manual_seed(3)
    batch = _batch()
    cropped = crop_speaker_cuts(batch, 200)
    assert cropped["num_frames"].tolist() == [300, 120, 200]  # transcribed and short cuts stay whole
    assert torch.equal(cropped["fbank"][:2], batch["fbank"][:2])
    window = cropped["fbank"][2, :200]
    start = int(window[0, 0].item()) // 2 - 2 * 300  # row 2 starts at 600 frames x 2 values
    assert 0 <= start <= 50 and torch.equal(window, batch["fbank"][2, start:start + 200])
    assert cropped["fbank"][2, 200:].abs().sum() == 0
    assert cropped["labels"]["events_present"].tolist() == [True, True, False]
    assert cropped["targets"]["whisper"]["present"].tolist() == [True, True, False]
    assert cropped["targets"]["whisper"]["lengths"].tolist() == [75, 30, 0]
    assert cropped["targets"]["ecapa"]["present"].tolist() == [True, True, False]
    assert cropped["labels"]["speakers"].tolist() == [0, 1, 2]


def test_crops_come_from_the_torch_rng_so_a_resumed_run_draws_the_same() -> None:
    torch.manual_seed(7)
    first = crop_speaker_cuts(_batch(), 100)["fbank"]
    torch.manual_seed(7)
    assert torch.equal(first, crop_speaker_cuts(_batch(), 100)["fbank"])


def test_dataset_labels_mark_what_each_cut_has(corpus) -> None:
    from types import SimpleNamespace as NS

    spec = LabelSpec(5, ("spk0", "spk1", "spk2"))
    dataset = FinetuneDataset([], None, spec)
    bare = NS(id="x", custom=None, supervisions=[NS(start=0.0, text=None, speaker="spk9", custom=None)])
    labels = dataset.labels([*list(corpus["cuts"])[:2], bare])
    assert labels["texts"] == ["utterance 0", "utterance 1", None]
    assert labels["events_present"].tolist() == [True, True, False]
    assert labels["events"][0].nonzero().flatten().tolist() == [0, 2]
    assert labels["speakers"].tolist() == [0, 1, -1]  # a speaker outside the training map has no class
    assert labels["speaker_only"].tolist() == [False, False, False]
