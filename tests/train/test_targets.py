"""KD targets as configuration: the dataclass and its file/flag forms, resolution against the stores, losses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mt2kd.errors import ConfigError
from mt2kd.store import TeacherSpec
from mt2kd.train import StudentConfig, TrainConfig
from mt2kd.train._losses import LOSSES, one_layer, resolve_targets, to_student_rate
from mt2kd.train._targets import KDTarget, paper_targets, parse_target

SPECS = {
    "whisper": TeacherSpec("whisper", "frames", 48, frame_rate=25.0),
    "hubert": TeacherSpec("hubert", "frames", 16, frame_rate=50.0),
    "beats": TeacherSpec("beats", "clip", 11),
    "ecapa": TeacherSpec("ecapa", "clip", 6),
}


def test_a_config_file_holds_the_targets_list_as_plain_mappings(tmp_path: Path) -> None:
    targets = [{"teacher": "whisper", "loss": "l1_logsigmoid_cos", "block": 2, "name": "w2"},
               {"teacher": "ecapa", "head": "attentive", "loss": "cos", "weight": 0.5}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"cuts": ["a.jsonl"], "stores": ["s.zarr"], "targets": targets}))
    cfg = TrainConfig.from_file(path)
    assert cfg.targets == (KDTarget("whisper", loss="l1_logsigmoid_cos", block=2, name="w2"),
                           KDTarget("ecapa", head="attentive", loss="cos", weight=0.5))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.kd_targets(sv_block=3) == cfg.targets
    assert "targets" not in TrainConfig().to_dict()  # a default config reads as it always did


@pytest.mark.parametrize(("data", "message"), [
    ({"targets": [{"teacher": "whisper", "wieght": 1.0}]}, r"targets\[0\]: unknown KDTarget fields \['wieght'\]"),
    ({"targets": [{"loss": "l1"}]}, r"targets\[0\]: a target must name its store teacher"),
    ({"targets": [{"teacher": "whisper", "block": "last"}]}, r"targets\[0\]: block must be an integer"),
    ({"targets": [{"teacher": "w", "block": 0}]}, "block must be 1-based"),
    ({"targets": [{"teacher": "w", "frame_rate": "skip"}]}, r"frame_rate must be one of \['stack', 'average'\]"),
    ({"targets": [{"teacher": "w"}, {"teacher": "w"}]}, r"target names must be unique .* Got \['w'\]"),
    ({"targets": [{"teacher": "w"}], "whisper_weight": 2.0}, r"\['whisper_weight'\] set the paper's default targets"),
])
def test_bad_targets_are_refused_naming_the_field(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(data)


def test_the_shortcut_flags_shape_the_paper_targets() -> None:
    cfg = TrainConfig(whisper_weight=0.5, speaker_teacher="spk")
    whisper, beats, ecapa = cfg.kd_targets(sv_block=2)
    assert (whisper.name, whisper.teacher, whisper.head, whisper.loss, whisper.weight) == (
        "whisper", "whisper", "frames", "l1", 0.5)
    assert (beats.head, beats.loss) == ("mean", "bce")
    assert (ecapa.name, ecapa.teacher, ecapa.head, ecapa.loss, ecapa.block) == ("ecapa", "spk", "attentive", "cos", 2)


def test_a_target_flag_is_key_value_pairs() -> None:
    assert parse_target("teacher=hubert, block=-2,frame_rate=average,weight=2") == KDTarget(
        "hubert", block=-2, frame_rate="average", weight=2.0)
    with pytest.raises(ConfigError, match="key=value pairs"):
        parse_target("teacher")


def test_head_sizes_come_from_the_specs_and_the_frame_rate_relation() -> None:
    targets = [KDTarget("whisper"), KDTarget("hubert", name="stacked"),
               KDTarget("hubert", name="averaged", frame_rate="average", loss="mse"),
               KDTarget("beats", head="mean", loss="bce"), KDTarget("ecapa", head="attentive", loss="cos", block=1)]
    resolved = resolve_targets(targets, SPECS)
    assert [(r.head.name, r.head.kind, r.head.dim, r.head.block, r.group) for r in resolved] == [
        ("whisper", "frames", 48, -1, 1), ("stacked", "frames", 32, -1, 2), ("averaged", "frames", 16, -1, 2),
        ("beats", "mean", 11, -1, 1), ("ecapa", "attentive", 6, 1, 1)]


@pytest.mark.parametrize(("target", "message"), [
    (KDTarget("nope"), r"target 'nope': teacher must be one of the stores' teachers \['beats', 'ecapa'"),
    (KDTarget("beats"), r"target 'beats': a 'frames' head needs a 'frames' teacher. Got teacher 'beats' of kind"),
    (KDTarget("whisper", head="attentive"), r"a 'attentive' head needs a 'clip' teacher"),
    (KDTarget("whisper", loss="huber"), r"loss must be one of \['bce', 'cos', 'l1', 'l1_logsigmoid_cos', 'mse', 'mvq'\]"),
    (KDTarget("whisper", head="conv"), r"head must be one of \['attentive', 'frames', 'mean'\]"),
])
def test_a_target_the_stores_cannot_serve_is_named(target: KDTarget, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_targets([target], SPECS)


def test_a_teacher_rate_that_is_no_multiple_of_25_hz_is_refused() -> None:
    specs = {"odd": TeacherSpec("odd", "frames", 4, frame_rate=40.0)}
    with pytest.raises(ConfigError, match="whole multiple of the student's 25 Hz.*Got 40 Hz"):
        resolve_targets([KDTarget("odd")], specs)


def test_stacking_and_averaging_bring_teacher_frames_to_25_hz() -> None:
    values = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    stacked, lengths = to_student_rate(values, torch.tensor([5, 3]), 2, "stack")
    assert stacked.shape == (2, 2, 4) and lengths.tolist() == [2, 1]
    assert stacked[0, 1].tolist() == values[0, 2:4].reshape(-1).tolist()
    averaged, _ = to_student_rate(values, torch.tensor([5, 3]), 2, "average")
    assert averaged[1, 0].tolist() == values[1, 0:2].mean(0).tolist()


def test_the_distilhubert_loss_is_l1_minus_log_sigmoid_cos_per_frame() -> None:
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, -2.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    frame0 = 0.5 - math.log(1 / (1 + math.exp(-1 / math.sqrt(2))))
    frame1 = 2.0 - math.log(1 / (1 + math.exp(1.0)))
    got = LOSSES["l1_logsigmoid_cos"].fn(s, t, mask)
    assert float(got) == pytest.approx((frame0 + frame1) / 2, rel=1e-6)
    assert float(LOSSES["mse"].fn(s, t, mask)) == pytest.approx((1 + 16) / 4)
    assert float(LOSSES["l1"].fn(s, t, mask)) == pytest.approx((1 + 4) / 4)


def test_a_student_with_configured_heads_reads_the_blocks_they_name() -> None:
    heads = resolve_targets([KDTarget("whisper", block=1, name="early"), KDTarget("whisper", name="late")], SPECS)
    config = StudentConfig.from_dict({**StudentConfig.preset("tiny").to_dict(),
                                      "heads": [r.head.__dict__ for r in heads]})
    from mt2kd.train import Student

    model = Student(config).eval()
    fbank = torch.randn(1, 100, 80) + 15
    before = model(fbank, torch.tensor([100]))
    assert set(before.outputs) == {"early", "late"} and before.outputs["early"].shape == (1, 25, 48)
    with torch.no_grad():  # a later block changes the late head's output only
        model.blocks[2].ffn1.net[1].weight.add_(1.0)
    after = model(fbank, torch.tensor([100]))
    torch.testing.assert_close(after.outputs["early"], before.outputs["early"])
    assert not torch.allclose(after.outputs["late"], before.outputs["late"])
    with pytest.raises(ConfigError, match="the student must have a 'mean' head"):
        _ = after.at_logits


def test_the_paper_targets_are_the_documented_three() -> None:
    assert [(t.name, t.head, t.loss, t.block) for t in paper_targets(sv_block=3)] == [
        ("whisper", "frames", "l1", -1), ("beats", "mean", "bce", -1), ("ecapa", "attentive", "cos", 3)]


def test_target_flags_replace_the_list_and_other_flags_still_apply() -> None:
    from mt2kd.train._cli import kd, resolve_config

    args = ["--target", "teacher=whisper_l8,block=2,loss=l1_logsigmoid_cos", "--target", "teacher=ecapa,head=attentive,"
            "loss=cos", "--lr", "0.01"]
    ctx = kd.make_context("kd", args)
    values = {k: v for k, v in ctx.params.items() if k != "config_file"}
    cfg = resolve_config(ctx, None, values)
    assert cfg.targets == (KDTarget("whisper_l8", block=2, loss="l1_logsigmoid_cos"),
                           KDTarget("ecapa", head="attentive", loss="cos"))
    assert cfg.lr == 0.01


def test_a_layer_of_a_teacher_with_a_layer_axis_is_one_slice_of_its_frames() -> None:
    config = {"resolved_layers": [8, 16, -1], "frames_per_row": 2}
    specs = {"whisper": TeacherSpec("whisper", "frames", 2 * 3 * 4, frame_rate=25.0, config=config)}
    resolved = resolve_targets([KDTarget("whisper", layer=16, loss="l1_logsigmoid_cos")], specs)
    assert resolved[0].name == "whisper_l16" and resolved[0].head.dim == 8 and resolved[0].layer == (1, 3, 2)
    values = torch.arange(24.0).view(1, 1, 24)  # rows: (l8 0-3, l16 4-7, l-1 8-11), (l8 12-15, l16 16-19, ...)
    assert one_layer(values, (1, 3, 2)).tolist() == [[[4.0, 5.0, 6.0, 7.0, 16.0, 17.0, 18.0, 19.0]]]
    with pytest.raises(ConfigError, match=r"layer must be one of teacher 'whisper''s layers \[8, 16, -1\]. Got 4"):
        resolve_targets([KDTarget("whisper", layer=4)], specs)
    with pytest.raises(ConfigError, match="layer needs a frames teacher with several layers"):
        resolve_targets([KDTarget("whisper", layer=4)], SPECS)
