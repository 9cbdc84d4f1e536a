"""Alignment rule (property-tested) and the masking of every KD term."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mt2kd.store import TeacherSpec
from mt2kd.train import Student, StudentConfig
from mt2kd.train._losses import align_frames, kd_losses, resolve_targets
from mt2kd.train._targets import paper_targets

SPECS = {"whisper": TeacherSpec("whisper", "frames", 2560, frame_rate=25.0), "beats": TeacherSpec("beats", "clip", 527),
         "ecapa": TeacherSpec("ecapa", "clip", 192)}


def _paper(whisper: float = 1.0, beats: float = 1.0, ecapa: float = 1.0):
    """The paper's three targets with these weights, resolved against full-size specs."""
    return resolve_targets(paper_targets(("whisper", whisper), ("beats", beats), ("ecapa", ecapa)), SPECS)

lengths = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(pairs=lengths, extra_s=st.integers(0, 3), extra_t=st.integers(0, 3))
def test_align_truncates_to_the_shorter_and_masks_the_rest(pairs, extra_s, extra_t) -> None:
    s_len = torch.tensor([p[0] for p in pairs])
    t_len = torch.tensor([p[1] for p in pairs])
    ts, tt = int(s_len.max()) + extra_s, int(t_len.max()) + extra_t  # padded widths may exceed every length
    student = torch.randn(len(pairs), ts, 3)
    teacher = torch.randn(len(pairs), tt, 3)
    s, t, mask = align_frames(student, s_len, teacher, t_len)
    assert s.shape[:2] == t.shape[:2] == mask.shape == (len(pairs), min(ts, tt))
    assert mask.sum(1).tolist() == [min(a, b) for a, b in pairs]
    for i, (a, b) in enumerate(pairs):
        n = min(a, b)
        assert mask[i, :n].all() and not mask[i, n:].any()  # valid frames form a prefix
        assert torch.equal(s[i, :n], student[i, :n]) and torch.equal(t[i, :n], teacher[i, :n])


def _batch(num_cuts: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    num_frames = torch.tensor([120, 100, 84][:num_cuts])
    fbank = torch.randn(num_cuts, 120, 80, generator=g) + 15
    frame_lengths = (num_frames + 3) // 4
    targets = {
        "whisper": {"values": torch.randn(num_cuts, 30, 2560, generator=g), "lengths": frame_lengths,
                    "present": torch.ones(num_cuts, dtype=torch.bool)},
        "beats": {"values": torch.randn(num_cuts, 527, generator=g) * 3,
                  "present": torch.ones(num_cuts, dtype=torch.bool)},
        "ecapa": {"values": torch.randn(num_cuts, 192, generator=g),
                  "present": torch.ones(num_cuts, dtype=torch.bool)},
    }
    return fbank, num_frames, targets


def _subset(targets, keep: list[int]):
    return {name: {k: v[keep] for k, v in t.items()} for name, t in targets.items()}


def test_a_cut_without_whisper_targets_adds_zero_loss_and_zero_gradient() -> None:
    torch.manual_seed(0)
    model = Student(StudentConfig.preset("tiny"))
    fbank, num_frames, targets = _batch(3, seed=1)
    targets["whisper"]["present"][1] = False
    targets["whisper"]["values"][1] = 0.0  # padding, as the loader writes it
    out = model(fbank, num_frames)
    masked = kd_losses(out, targets, _paper(beats=0.0, ecapa=0.0))
    keep = [0, 2]
    others = kd_losses(model(fbank[keep], num_frames[keep]), _subset(targets, keep), _paper())
    torch.testing.assert_close(masked["whisper"], others["whisper"], rtol=1e-5, atol=1e-6)

    # the masked cut's input gets no gradient through the whisper term (cuts never mix inside the model)
    fbank = fbank.clone().requires_grad_(True)
    kd_losses(model(fbank, num_frames), targets, _paper(beats=0.0, ecapa=0.0))["total"].backward()
    assert fbank.grad[1].abs().max() == 0.0
    assert fbank.grad[0].abs().max() > 0.0 and fbank.grad[2].abs().max() > 0.0


def test_clip_terms_average_over_present_cuts_only() -> None:
    torch.manual_seed(0)
    model = Student(StudentConfig.preset("tiny")).eval()
    fbank, num_frames, targets = _batch(3, seed=2)
    for name in ("beats", "ecapa"):
        targets[name]["present"][0] = False
        targets[name]["values"][0] = 0.0
    full = kd_losses(model(fbank, num_frames), targets, _paper())
    keep = [1, 2]
    part = kd_losses(model(fbank[keep], num_frames[keep]), _subset(targets, keep), _paper())
    torch.testing.assert_close(full["beats"], part["beats"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full["ecapa"], part["ecapa"], rtol=1e-5, atol=1e-6)


def test_a_batch_without_a_teacher_gives_zero_not_nan() -> None:
    torch.manual_seed(0)
    model = Student(StudentConfig.preset("tiny"))
    fbank, num_frames, targets = _batch(2, seed=3)
    for t in targets.values():
        t["present"][:] = False
    del targets["ecapa"]  # a store view without that teacher at all
    losses = kd_losses(model(fbank, num_frames), targets, _paper())
    for key in ("whisper", "beats", "ecapa", "total"):
        assert float(losses[key].detach()) == 0.0
    losses["total"].backward()  # still part of the graph: DDP sees every parameter
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
