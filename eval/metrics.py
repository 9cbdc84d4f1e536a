"""The evaluation metrics in one namespace: pure numpy, no model or store needed.

Examples
--------
>>> from mt2kd.eval.metrics import eer, mean_average_precision, wer
>>> wer(["a b c"], ["a c"]).wer  # one deletion of three words
0.3333333333333333
"""

from mt2kd.eval._asr import (
                             WerResult,
                             cer,
                             ctc_greedy_decode,
                             edit_counts,
                             pieces_to_text,
                             read_transcripts,
                             score_transcripts,
                             wer,
)
from mt2kd.eval._kd import kd_l1, kd_l1_parts
from mt2kd.eval._speaker import DetCurve, cosine_scores, det_curve, eer
from mt2kd.eval._tagging import average_precision, mean_average_precision
from mt2kd.eval._trials import make_trials, read_trials, write_trials

__all__ = [
    "WerResult", "wer", "cer", "edit_counts", "ctc_greedy_decode", "pieces_to_text",
    "read_transcripts", "score_transcripts",
    "average_precision", "mean_average_precision",
    "DetCurve", "det_curve", "eer", "cosine_scores",
    "make_trials", "read_trials", "write_trials",
    "kd_l1", "kd_l1_parts",
]
