"""``mt2kd eval student``: a fine-tuned student's WER per method, mAP and EER per test set, and VoxCeleb1 lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.eval._config import StudentEvalConfig
from mt2kd.eval._decode import decode
from mt2kd.eval._scoring import build_trials
from mt2kd.eval._student_eval import evaluate_student
from mt2kd.eval._trials import is_voxceleb_list, match_voxceleb_trials, read_voxceleb_trials, utterance_key

VOX_SAMPLE = Path(__file__).parent / "data" / "voxceleb1_trials_sample.txt"  # lines as VoxCeleb1 publishes them
TEXTS = ["the cat sat", "a dog ran far", "rain on the car", "music and speech"]


@pytest.fixture(scope="module")
def transcribed(corpus, tmp_path_factory) -> Path:
    """The eval corpus with a transcript on every cut."""
    from lhotse import CutSet

    cuts = CutSet.from_file(corpus.manifest).to_eager()
    for i, cut in enumerate(cuts):
        cut.supervisions[0].text = TEXTS[i % len(TEXTS)]
    path = tmp_path_factory.mktemp("texts") / "cuts.jsonl.gz"
    cuts.to_file(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    """A fine-tuned checkpoint of random weights, written as the trainer writes one."""
    import dataclasses

    from mt2kd.train import AsrConfig, FinetuneConfig, StudentConfig, Tokenizer
    from mt2kd.train._checkpoint import save_checkpoint
    from mt2kd.train._finetune_model import build_model

    torch.manual_seed(0)
    tokenizer = Tokenizer.train(TEXTS * 3, vocab_size=30)
    student = dataclasses.replace(StudentConfig.preset("tiny"), num_classes=len(corpus.labels), sv_block=2,
                                  teacher_frame_dim=corpus.frames_dim, embedding_dim=corpus.embedding_dim)
    asr = AsrConfig(vocab_size=tokenizer.vocab_size, decoder_dim=8, joiner_dim=8)
    cfg = FinetuneConfig(cuts=(str(corpus.manifest),), labels=str(corpus.labels_file), asr=asr)
    model = build_model(student, asr, 4, cfg)
    state = {"kind": "finetune", "step": 3, "student_config": student.to_dict(), "train_config": cfg.to_dict(),
             "model": model.state_dict(), "asr_config": asr.to_dict(), "tokenizer": tokenizer.to_bytes(),
             "speakers": ["spk0", "spk1", "spk2", "spk3"], "label_file": str(corpus.labels_file)}
    return save_checkpoint(state, tmp_path_factory.mktemp("ft"), keep_last=1)


def test_each_set_gets_wer_per_method_map_and_eer(checkpoint, transcribed, corpus) -> None:
    config = StudentEvalConfig(str(checkpoint), (f"clean={transcribed}", f"events={corpus.manifest}"), batch_size=5)
    report = evaluate_student(config).report
    clean, events = report["test_sets"]["clean"], report["test_sets"]["events"]
    assert set(clean["wer"]) == {"greedy", "beam", "ctc"} and clean["wer"]["greedy"]["num_cuts"] == 12
    assert all(0.0 <= clean["wer"][m]["rate"] for m in ("greedy", "beam", "ctc"))
    assert events["wer"]["greedy"]["rate"] is None and "transcript" in events["wer"]["greedy"]["reason"]
    for entry in (clean, events):  # the student's label list, from its checkpoint, names the events
        assert entry["map"]["num_cuts"] == 12 and entry["map"]["map"] is not None
        assert entry["eer"]["eer"] is not None and entry["trials"]["num_speakers"] == 4
    json.dumps(report, allow_nan=False)


def test_a_store_adds_the_kd_l1_and_a_mismatched_one_is_refused(checkpoint, corpus, store, tmp_path) -> None:
    report = evaluate_student(StudentEvalConfig(str(checkpoint), (str(corpus.manifest),), stores=(str(store),),
                                                methods=("ctc",))).report
    kd = report["test_sets"]["cuts"]["kd_l1"]
    assert kd["num_cuts"] == 12 and kd["l1"] is not None and kd["l1"] > 0
    from mt2kd.errors import ConfigError

    with pytest.raises(ConfigError, match="frames head must be as wide as the 'beats' teacher"):
        evaluate_student(StudentEvalConfig(str(checkpoint), (str(corpus.manifest),), stores=(str(store),),
                                           frames_teacher="beats"))


def test_batched_hypotheses_are_those_of_each_cut_decoded_alone(checkpoint, transcribed) -> None:
    from lhotse import CutSet

    from mt2kd.eval._student import load_waveform
    from mt2kd.eval._student_eval import run_pass
    from mt2kd.train import compute_fbank, load_finetuned

    student = load_finetuned(checkpoint)
    cuts = list(CutSet.from_file(transcribed))
    batched = run_pass(student, cuts, ["greedy", "ctc"], 4, 5, "cpu").hypotheses
    for cut in cuts[:4]:
        fbank = torch.as_tensor(compute_fbank(load_waveform(cut)))[None]
        with torch.no_grad():
            out = student.model.student(fbank, torch.tensor([fbank.shape[1]]))
        for method in ("greedy", "ctc"):
            tokens = decode(student.model.asr, out.hidden_states[-1], out.num_frames, method=method).tokens
            assert batched[method][cut.id] == student.tokenizer.decode(tokens)[0]


def test_a_stage1_checkpoint_is_scored_without_wer(tmp_path, corpus) -> None:
    import dataclasses

    from mt2kd.train import Student, StudentConfig
    from mt2kd.train._checkpoint import save_checkpoint

    config = dataclasses.replace(StudentConfig.preset("tiny"), num_classes=len(corpus.labels), sv_block=2)
    path = save_checkpoint({"step": 1, "student_config": config.to_dict(), "model": Student(config).state_dict()},
                           tmp_path, keep_last=1)
    report = evaluate_student(StudentEvalConfig(str(path), (str(corpus.manifest),),
                                                labels=str(corpus.labels_file))).report
    assert set(report["methods_skipped"]) == {"greedy", "beam", "ctc"}
    assert report["test_sets"]["cuts"]["map"]["map"] is not None


def test_cli_prints_one_aligned_row_per_set_and_writes_json_and_plots(checkpoint, transcribed, tmp_path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["eval", "student", "--checkpoint", str(checkpoint), "--test-set",
                                       f"dev={transcribed}", "--method", "greedy", "--method", "ctc",
                                       "--out", str(out), "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert header.split() == ["test", "set", "cuts", "WER", "greedy", "WER", "ctc", "mAP", "EER"]
    assert row.split()[:2] == ["dev", "12"] and row.endswith("%")
    assert json.loads(out.read_text())["test_sets"]["dev"]["wer"]["ctc"]["num_ref"] > 0
    assert (tmp_path / "plots" / "det.png").is_file()


def test_the_published_voxceleb1_list_is_read_and_matched_by_recording_path() -> None:
    assert is_voxceleb_list(VOX_SAMPLE)
    entries = read_voxceleb_trials(VOX_SAMPLE)
    assert entries[0] == ("id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav", True)
    assert [e[2] for e in entries] == [True, False, True, False, True, False]
    assert utterance_key("/corpora/vox1/test/wav/id10270/x6uYqmx31kE/00001.flac") == "id10270/x6uYqmx31kE/00001"
    audio_of = {"vox-a": "/d/wav/id10270/x6uYqmx31kE/00001.wav", "vox-b": "/d/wav/id10270/8jEAjG6SegY/00008.flac",
                "vox-c": "/d/wav/id10300/ize_eiCFEg0/00003.wav", "vox-d": "/d/wav/id10300/3ZNK5mXgfHw/00002.wav"}
    trials, unmatched = match_voxceleb_trials(entries, audio_of)
    assert trials == [("vox-a", "vox-b", True), ("vox-a", "vox-c", False), ("vox-c", "vox-d", True),
                      ("vox-c", "vox-b", False)]
    assert unmatched == 2


def test_build_trials_takes_a_voxceleb_list_for_cuts(tmp_path) -> None:
    from lhotse import Recording
    from lhotse.audio import AudioSource

    cuts = []
    for i, key in enumerate(["id10270/x6uYqmx31kE/00001", "id10270/8jEAjG6SegY/00008", "id10300/ize_eiCFEg0/00003"]):
        source = AudioSource(type="file", channels=[0], source=f"/vox/wav/{key}.wav")
        cuts.append(Recording(f"r{i}", [source], 16_000, 16_000, 1.0).to_cut())
    trials, info = build_trials(cuts, str(VOX_SAMPLE), 10, 10, 0)
    assert trials == [("r0", "r1", True), ("r0", "r2", False), ("r2", "r1", False)]
    assert info["source"] == "voxceleb_list" and info["num_trials_unmatched"] == 3
