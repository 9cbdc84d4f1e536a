"""The stage-2 losses on the student's own heads: AAM-softmax by hand, CE and BCE as torch computes them."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mt2kd.train._finetune_model import SpeakerClassifier, aam_logits, tagging_loss


def test_aam_logits_match_hand_computed_values() -> None:
    # row 0: cos(theta) = 0.6, sin = 0.8; cos(theta + 0.2) = 0.6 x 0.980067 - 0.8 x 0.198669 = 0.429104 -> x 30
    # row 1: cos(theta) = -0.99, theta = 3.0 > pi - 0.2: past the turn, -0.99 - 0.2 x 0.198669 = -1.029734 -> x 30
    cosine = torch.tensor([[0.6, 0.1, -0.5], [-0.99, 0.2, 0.0]])
    logits = aam_logits(cosine, torch.tensor([0, 0]), margin=0.2, scale=30.0)
    expected = torch.tensor([[12.87312, 3.0, -15.0], [-30.89202, 6.0, 0.0]])
    assert torch.allclose(logits, expected, atol=1e-3)
    assert torch.allclose(aam_logits(cosine, torch.tensor([1, 2]), 0.0, 1.0), cosine)  # no margin: plain cosines


def test_aam_loss_is_cross_entropy_of_the_margin_logits() -> None:
    torch.manual_seed(0)
    head = SpeakerClassifier(8, 5, "aam", margin=0.2, scale=30.0)
    embedding, speakers = torch.randn(4, 8), torch.tensor([1, 4, 0, 2])
    cosine = F.normalize(embedding) @ F.normalize(head.weight).T
    theta = torch.acos(cosine.gather(1, speakers[:, None]))
    expected_target = 30.0 * torch.cos(theta + 0.2)
    logits = head.logits(embedding, speakers)
    assert torch.allclose(logits.gather(1, speakers[:, None]), expected_target, atol=1e-4)
    assert torch.allclose(head.loss(embedding, speakers), F.cross_entropy(logits, speakers))


def test_speaker_ce_equals_torch_on_the_same_logits_over_labelled_cuts() -> None:
    torch.manual_seed(0)
    head = SpeakerClassifier(8, 3, "ce")
    embedding, speakers = torch.randn(5, 8), torch.tensor([2, -1, 0, 1, -1])
    logits = head.logits(embedding)
    keep = speakers >= 0
    assert torch.equal(head.loss(embedding, speakers), F.cross_entropy(logits[keep], speakers[keep]))
    none = head.loss(embedding, torch.full((5,), -1))
    none.backward()
    assert none.item() == 0.0 and head.weight.grad is not None  # tied to the graph, 0 not NaN


def test_tagging_bce_averages_labelled_cuts_only() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [9.0, 9.0]])
    labels = torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    present = torch.tensor([True, True, False])
    expected = F.binary_cross_entropy_with_logits(logits[:2], labels[:2].float())
    assert torch.allclose(tagging_loss(logits, labels, present), expected)
    assert tagging_loss(logits, labels, torch.zeros(3, dtype=torch.bool)).item() == 0.0
