"""The ASR output vocabulary: a sentencepiece BPE model trained from the cuts' transcripts.

Ids are fixed so every head and decoder can rely on them: ``0`` is the
blank of the transducer and of CTC (the control symbol ``<blk>``, which
encoding never produces), ``1`` is ``<unk>``, and there are no BOS/EOS/PAD
pieces. The model is one small protobuf; :meth:`Tokenizer.to_bytes` and
:meth:`Tokenizer.from_bytes` let it travel inside a checkpoint, so a
checkpoint decodes without the folder it was trained with.

Text is encoded exactly as given (sentencepiece's NFKC normalisation
aside): case and punctuation are the corpus's business, as for WER.
Torch-free: ``mt2kd train bpe`` does not load torch.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mt2kd.errors import ConfigError, ValidationError

log = logging.getLogger(__name__)

BLANK_ID = 0  # transducer/CTC blank, the control symbol <blk>
UNK_ID = 1  # pieces the model cannot spell
BLANK_PIECE = "<blk>"
MODEL_FILE = "bpe.model"  # the sentencepiece model inside a tokenizer folder
TOKENS_FILE = "tokens.txt"  # 'piece id' per line, for people reading the vocabulary


def cut_text(cut: Any) -> str | None:
    """The transcript of a cut: its supervisions' texts in time order, joined by spaces.

    None when no supervision carries text (such a cut has no ASR target).

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> cut_text(S(supervisions=[S(start=1.0, text="world"), S(start=0.0, text="hello")]))
    'hello world'
    """
    sups = sorted(getattr(cut, "supervisions", None) or [], key=lambda s: s.start)
    texts = [" ".join(s.text.split()) for s in sups if isinstance(getattr(s, "text", None), str)]
    texts = [t for t in texts if t]
    return " ".join(texts) if texts else None


def iter_transcripts(paths: Sequence[str | Path]) -> Iterator[str]:
    """Every non-empty cut transcript of the manifests, in manifest order."""
    from mt2kd.cuts import open_manifest

    for path in paths:
        for cut in open_manifest(path):
            text = cut_text(cut)
            if text is not None:
                yield text


class Tokenizer:
    """A sentencepiece BPE model with blank id 0.

    Examples
    --------
    >>> tok = Tokenizer.train(["hello world", "hello there"], vocab_size=30)
    >>> tok.decode(tok.encode(["hello world"]))
    ['hello world']
    >>> Tokenizer.from_bytes(tok.to_bytes()).encode(["there"]) == tok.encode(["there"])
    True
    """

    def __init__(self, model_bytes: bytes) -> None:
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except (RuntimeError, OSError, TypeError) as e:  # sentencepiece raises RuntimeError on a bad proto
            raise ValidationError(f"tokenizer bytes must be a sentencepiece model. Got {len(model_bytes)} bytes "
                                  f"that do not parse: {e}") from e
        self._bytes = bytes(model_bytes)
        if self._sp.id_to_piece(BLANK_ID) != BLANK_PIECE or not self._sp.is_control(BLANK_ID):
            raise ValidationError(f"a tokenizer's id {BLANK_ID} must be the control symbol {BLANK_PIECE!r} "
                                  f"(the blank). Got {self._sp.id_to_piece(BLANK_ID)!r}: train it with "
                                  "`mt2kd train bpe`.")

    @property
    def vocab_size(self) -> int:
        """Output classes of the ASR heads, blank included."""
        return int(self._sp.get_piece_size())

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (never the blank)."""
        return [list(ids) for ids in self._sp.encode(list(texts), out_type=int)]

    def decode(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id list; blanks and other control ids decode to nothing."""
        for ids in token_ids:
            bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
            if bad:
                raise ValidationError(f"token ids must be in [0, {self.vocab_size}). Got {bad[:5]}.")
        return [self._sp.decode([int(i) for i in ids]) for ids in token_ids]

    def pieces(self) -> list[str]:
        """Every piece, indexed by id."""
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    def to_bytes(self) -> bytes:
        """The serialised model, e.g. to store in a checkpoint dict."""
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> Tokenizer:
        return cls(data)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A tokenizer folder written by :meth:`save` (or its ``bpe.model`` file)."""
        path = Path(path)
        model = path / MODEL_FILE if path.is_dir() else path
        if not model.is_file():
            raise ConfigError(f"tokenizer must be a folder holding {MODEL_FILE} (from `mt2kd train bpe`) or that "
                              f"file. Got {str(path)!r}, which {'lacks it' if path.is_dir() else 'does not exist'}.")
        return cls(model.read_bytes())

    def save(self, folder: str | Path) -> Path:
        """Write ``bpe.model`` and a readable ``tokens.txt`` into ``folder``; the model path is returned."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_FILE).write_bytes(self._bytes)
        lines = [f"{piece} {i}\n" for i, piece in enumerate(self.pieces())]
        (folder / TOKENS_FILE).write_text("".join(lines), encoding="utf-8")
        return folder / MODEL_FILE

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 500) -> Tokenizer:
        """BPE over ``texts`` (in memory, one thread, so the same texts give the same model bytes).

        A corpus too small for ``vocab_size`` pieces gives fewer (logged); an
        empty one is an error.
        """
        import sentencepiece as spm

        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValidationError("BPE training needs at least one transcript. Got none: do the cuts' "
                                  "supervisions carry text?")
        if vocab_size < 3:
            raise ConfigError(f"vocab_size must be >= 3 (blank, unk and one piece). Got {vocab_size}.")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            control_symbols=[BLANK_PIECE], unk_id=UNK_ID, bos_id=-1, eos_id=-1, pad_id=-1,
            character_coverage=1.0, num_threads=1, hard_vocab_limit=False, minloglevel=2,
            input_sentence_size=0, shuffle_input_sentence=False,
        )
        tokenizer = cls(model.getvalue())
        if tokenizer.vocab_size < vocab_size:
            log.warning("the transcripts (%d) allow only %d BPE pieces; asked for %d", len(texts),
                        tokenizer.vocab_size, vocab_size)
        return tokenizer


def train_bpe(cuts: Sequence[str | Path], vocab_size: int, out: str | Path) -> Tokenizer:
    """Train a tokenizer from the transcripts of CutSet manifests and save it into ``out``.

    Examples
    --------
    >>> tok = train_bpe(["train_cuts.jsonl.gz"], 500, "data/bpe500")  # doctest: +SKIP
    >>> tok.vocab_size  # doctest: +SKIP
    500
    """
    texts = list(iter_transcripts(cuts))
    if not texts:
        raise ValidationError(f"BPE training needs transcripts. Got no cut with supervision text in "
                              f"{[str(c) for c in cuts]}.")
    tokenizer = Tokenizer.train(texts, vocab_size)
    tokenizer.save(out)
    return tokenizer
