"""Cut labels for stage 2: both event conventions (icefall's AudioSet manifests as committed), speakers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mt2kd.errors import ValidationError
from mt2kd.train._finetune_data import LabelSpec, scan_labels
from mt2kd.train._labels import cut_events, cut_speaker, events_to_multi_hot

ICEFALL_SAMPLE = Path(__file__).parent / "data" / "icefall_audioset_cuts.jsonl"  # icefall's AT recipe layout


def _icefall_cuts() -> list:
    from lhotse import CutSet

    return list(CutSet.from_file(ICEFALL_SAMPLE))


def test_icefall_audio_event_is_read_as_class_indices() -> None:
    cuts = _icefall_cuts()
    assert [cut_events(c) for c in cuts] == [[0, 137, 431], [72], [300, 301]]
    first = cut_events(cuts[0])
    assert first is not None
    assert events_to_multi_hot(first, 527, None, cuts[0].id).nonzero()[0].tolist() == [0, 137, 431]


def test_icefall_manifest_scans_and_batches_like_our_own(tmp_path) -> None:
    found = scan_labels([ICEFALL_SAMPLE], 527)
    assert (found.num_cuts, found.num_with_events, found.num_with_text, found.num_with_speaker) == (3, 3, 0, 0)
    events = LabelSpec(527, ()).events(_icefall_cuts()[2])
    assert events is not None and np.flatnonzero(events.numpy()).tolist() == [300, 301]


def test_our_events_win_and_names_need_the_label_list(tmp_path) -> None:
    from types import SimpleNamespace as NS

    both = NS(id="c", custom={"events": ["dog"]}, supervisions=[NS(custom={"audio_event": "3"}, speaker=None)])
    assert cut_events(both) == ["dog"]
    named = NS(id="c", custom=None, supervisions=[NS(custom={"audio_event": "Speech; Dog"}, speaker="s1")])
    assert cut_events(named) == ["Speech", "Dog"] and cut_speaker(named) == "s1"
    labels = tmp_path / "labels.txt"
    labels.write_text("Speech\nDog\n")
    named_events = LabelSpec(2, (), str(labels)).events(named)
    assert named_events is not None and named_events.tolist() == [True, True]
    with pytest.raises(ValidationError, match="cut 'c'.*--labels"):
        LabelSpec(2, ()).events(named)
    assert cut_events(NS(custom={}, supervisions=[])) is None


def test_scan_collects_sorted_speakers_and_refuses_a_bad_label_up_front(tmp_path, corpus) -> None:
    found = scan_labels([corpus["manifest"]], 527)
    assert found.speakers == ("spk0", "spk1", "spk2") and found.num_with_text == 6
    with pytest.raises(ValidationError, match="class index must be in \\[0, 3\\)"):
        scan_labels([corpus["manifest"]], 3)  # events go up to class 4
