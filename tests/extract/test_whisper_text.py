"""The whisper-text teacher against whisper.decode itself (tiny random model: the texts are meaningless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mt2kd.errors import ConfigError
from mt2kd.extract import load_teacher
from mt2kd.extract.whisper_text import RANDOM_NOTE, WhisperTextTeacher, write_tiny_whisper_text_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_whisper_text_checkpoint(tmp_path_factory.mktemp("wt") / "tiny.pt", seed=3)


def audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


def text_of(output: np.ndarray) -> str:
    assert output.dtype == np.uint8 and output.ndim == 1
    return output.tobytes().decode("utf-8")


def direct(checkpoint: Path, wave: np.ndarray, **options: object) -> str:
    """openai-whisper's own path: load_model, log_mel_spectrogram(pad_or_trim(audio)), decode."""
    import whisper

    model = whisper.load_model(str(checkpoint), device="cpu")
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)), model.dims.n_mels)
    result = whisper.decode(model, mel, whisper.DecodingOptions(without_timestamps=True, fp16=False, **options))
    return str(result.text).strip()


# whisper's own beam search (called directly here) sorts a torch tensor with numpy: numpy 2 warns
@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
@pytest.mark.parametrize("options", [{}, {"language": "en", "task": "translate"}, {"language": "de",
                                                                                    "beam_size": 3}])
def test_text_equals_whisper_decode(checkpoint: Path, options: dict[str, object]) -> None:
    teacher = load_teacher("whisper-text", checkpoint, **options)
    wave = audio(2.3, seed=1)
    got = text_of(teacher.extract([wave])[0])
    want = dict(options)
    if "beam_size" in want:
        want["beam_size"] = int(str(want["beam_size"]))
    assert got == direct(checkpoint, wave, **want)
    assert got  # a random model says something: the test compares real token sequences


def test_long_cuts_are_decoded_in_30s_windows_joined_by_a_space(checkpoint: Path) -> None:
    teacher = load_teacher("whisper-text", checkpoint, language="en")
    wave = audio(34.0, seed=2)
    windows = [wave[:480_000], wave[480_000:]]
    want = " ".join(t for t in (direct(checkpoint, w, language="en") for w in windows) if t)
    assert text_of(teacher.extract([wave])[0]) == want


def test_batched_cuts_get_the_text_they_get_alone(checkpoint: Path) -> None:
    teacher = load_teacher("whisper-text", checkpoint, language="en")
    waves = [audio(4.0, seed=4), audio(1.0, seed=5)]
    batched = [text_of(o) for o in teacher.extract(waves)]
    assert batched == [text_of(teacher.extract([w])[0]) for w in waves]


def test_spec_says_text_and_random(checkpoint: Path) -> None:
    teacher = load_teacher("whisper-text", checkpoint)
    assert isinstance(teacher, WhisperTextTeacher)
    spec = teacher.spec
    assert (spec.kind, spec.dim, spec.dtype, spec.frame_rate) == ("text", 1, "uint8", None)
    assert spec.config["random_init"] is True and spec.config["note"] == RANDOM_NOTE
    assert spec.config["beam_size"] == 0 and spec.config["task"] == "transcribe"


def test_bad_options_are_refused(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match=r"task must be one of \['transcribe', 'translate'\]. Got 'tr'"):
        load_teacher("whisper-text", checkpoint, task="tr")
    with pytest.raises(ConfigError, match="language must be a whisper language code.*Got 'xx'"):
        load_teacher("whisper-text", checkpoint, language="xx")
    with pytest.raises(ConfigError, match=r"precision must be one of \['fp32', 'fp16'\]. Got 'bf16'"):
        load_teacher("whisper-text", checkpoint, precision="bf16")


def test_extract_then_export_text_gives_a_cutset_of_the_transcripts(checkpoint: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from lhotse import CutSet
    from lhotse.serialization import deserialize_item

    from mt2kd.cli import main
    from mt2kd.extract._plan import make_plan
    from mt2kd.store import TeacherStore
    from mt2kd.tests.extract._corpus import DEMO

    made = CliRunner().invoke(main, ["teachers", "make-tiny", str(tmp_path / "t"), "--teacher", "whisper-text"])
    assert made.exit_code == 0, made.output
    tiny = tmp_path / "t" / "whisper-text" / "tiny.pt"
    info = CliRunner().invoke(main, ["teachers", "info", "whisper-text", str(tiny), "--option", "language=en"])
    assert info.exit_code == 0 and "Kind           : text" in info.output, info.output
    cuts = str(DEMO / "speech_cuts.jsonl.gz")
    store = str(tmp_path / "store")
    result = CliRunner().invoke(main, ["extract", "--cuts", cuts, "--store", store, "--workers", "1",
                                       "--teacher", f"whisper-text={tiny}:language=en"])
    assert result.exit_code == 0, result.output
    plan = make_plan((cuts,), 1.0)
    all_cuts = [c for s in plan.shards for c in s.cuts]
    opened = TeacherStore.open(store)
    assert opened.verify({c["id"]: c["duration"] for c in all_cuts}) == []
    teacher = load_teacher("whisper-text", tiny, language="en")
    for cut in all_cuts[:2]:
        samples = np.asarray(deserialize_item(cut).resample(16_000).load_audio(), np.float32).mean(axis=0)
        assert opened.texts([cut["id"]], "whisper-text") == [text_of(teacher.extract([samples])[0])]
    out = tmp_path / "transcribed.jsonl.gz"
    exported = CliRunner().invoke(main, ["store", "export-text", store, "--cuts", cuts, "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "random" in exported.output and f"{len(all_cuts)} cuts" in exported.output
    texts = dict(zip([c["id"] for c in all_cuts], opened.texts([c["id"] for c in all_cuts], "whisper-text")))
    written = CutSet.from_file(out)
    assert sorted(c.id for c in written) == sorted(texts)
    for cut in written:
        assert [s.text for s in cut.supervisions] == [texts[cut.id]]
        sup = cut.supervisions[0]
        assert (sup.start, sup.duration, sup.language) == (0.0, cut.duration, "en")
