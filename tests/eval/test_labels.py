"""Label lists, event labels of cuts, and the run configuration."""

from __future__ import annotations

import numpy as np
import pytest

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.eval._config import EvalConfig
from mt2kd.eval._tagging import events_to_multi_hot, load_label_list


def test_plain_label_list(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("Speech\nDog\n\nMusic\n")
    assert load_label_list(path) == {"Speech": 0, "Dog": 1, "Music": 2}


def test_audioset_csv_maps_mid_and_name(tmp_path):
    path = tmp_path / "class_labels_indices.csv"
    path.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n')
    mapping = load_label_list(path)
    assert mapping["/m/05zppz"] == mapping["Male speech, man speaking"] == 1
    assert mapping["Speech"] == 0


def test_events_names_and_indices_mix():
    target = events_to_multi_hot(["Dog", 2, "0"], 4, {"Dog": 1}, "cut-1")
    assert target.tolist() == [True, True, True, False]


def test_event_index_out_of_range_names_the_cut():
    with pytest.raises(ValidationError, match="cut 'c9'.*Got 7"):
        events_to_multi_hot([7], 4, None, "c9")


def test_event_name_without_label_list():
    with pytest.raises(ValidationError, match="--labels"):
        events_to_multi_hot(["Dog"], 4, None, "c1")


def test_config_round_trip_and_validation():
    config = EvalConfig(cuts=("a.jsonl",), stores=("s.zarr", "t.zarr"), max_cuts=5, seed=3)
    assert EvalConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="max_cuts"):
        EvalConfig(cuts=("a",), stores=("s",), max_cuts=0)
    with pytest.raises(ConfigError, match="unknown EvalConfig fields"):
        EvalConfig.from_dict({"cuts": ["a"], "stores": ["s"], "colour": 1})


def test_sigmoid_is_stable_for_large_logits():
    from mt2kd.eval._inputs import sigmoid

    values = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0])
