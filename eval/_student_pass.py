"""One pass of a fine-tuned student over a test set: transcripts per decoding method, tag logits, embeddings.

Cuts go through the encoder in padded batches under ``torch.no_grad``; the
ASR heads decode each batch with every requested method (batched, see
``_decode.py``), and the tokenizer that travelled in the checkpoint turns
tokens into text. Tag logits and speaker embeddings are kept per cut; with a
store, the frame L1 to the frames teacher is summed as ``eval kd`` sums it.
A cut whose audio cannot be read is skipped and recorded with its reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mt2kd.eval._decode import decode
from mt2kd.eval._student import StudentResults, _add_frame_l1, _features

TRANSDUCER_METHODS = ("greedy", "beam")  # need the transducer; "ctc" needs the CTC head


@dataclasses.dataclass
class PassResults(StudentResults):
    """:class:`StudentResults` (logits, embeddings, L1 sums, failures) plus each method's transcripts."""

    hypotheses: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # method -> cut ID -> text


def usable_methods(heads: Any, methods: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The requested methods these ASR heads can run, and why each other one is left out."""
    if heads is None:
        return [], {m: "the checkpoint has no ASR heads (a stage-1 student, or fine-tuned without --tokenizer)"
                    for m in methods}
    usable, skipped = [], {}
    for method in methods:
        needs_transducer = method in TRANSDUCER_METHODS
        present = heads.joiner is not None if needs_transducer else heads.ctc_head is not None
        if present:
            usable.append(method)
        else:
            skipped[method] = f"the ASR heads have no {'transducer' if needs_transducer else 'CTC head'}"
    return usable, skipped


def run_pass(student: Any, cuts: Sequence[Any], methods: Sequence[str], beam: int, batch_size: int,
             device: str, store: Any = None, frames_teacher: str = "whisper") -> PassResults:
    """Outputs of ``student`` (a :func:`mt2kd.train.load_finetuned` result) for every readable cut.

    Examples
    --------
    >>> res = run_pass(load_finetuned("avg.pt"), cuts, ["greedy"], 4, 8, "cpu")  # doctest: +SKIP
    >>> res.hypotheses["greedy"]["utt-1"]  # doctest: +SKIP
    'hello world'
    """
    model = student.model.to(device).eval()
    results = PassResults(num_classes=student.student_config.num_classes)
    results.hypotheses = {method: {} for method in methods}
    for start in range(0, len(cuts), batch_size):
        fbanks = _features(cuts[start:start + batch_size], results.failures)
        if fbanks:
            out = _run_batch(model, student.tokenizer, fbanks, methods, beam, device, results)
            if store is not None:
                _add_frame_l1(out, list(fbanks), store, frames_teacher, results)
    return results


@torch.no_grad()
def _run_batch(model: Any, tokenizer: Any, fbanks: dict[str, torch.Tensor], methods: Sequence[str], beam: int,
               device: str, results: PassResults) -> Any:
    """Run one batch, keep its outputs in ``results``; returns the student output (for the frame L1)."""
    cut_ids = list(fbanks)
    num_frames = torch.tensor([fbanks[c].shape[0] for c in cut_ids])
    padded = torch.nn.utils.rnn.pad_sequence([fbanks[c] for c in cut_ids], batch_first=True)
    out = model.student(padded.to(device), num_frames.to(device))
    at_logits, sv = out.at_logits.float().cpu().numpy(), out.sv_embedding.float().cpu().numpy()
    for row, cut_id in enumerate(cut_ids):
        results.at_logits[cut_id] = at_logits[row].astype(np.float64)
        results.sv_embeddings[cut_id] = sv[row].astype(np.float64)
    for method in methods:
        decoded = decode(model.asr, out.hidden_states[-1], out.num_frames, method=method, beam=beam)
        for cut_id, text in zip(cut_ids, tokenizer.decode(decoded.tokens)):
            results.hypotheses[method][cut_id] = text
    return out
