"""End to end: ``mt2kd eval teachers`` on a synthetic corpus whose right answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.eval._config import EvalConfig
from mt2kd.eval._run import evaluate
from mt2kd.eval._trials import write_trials


def _run_cli(*args: str) -> dict:
    result = CliRunner().invoke(main, ["eval", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_perfect_teachers_score_map_1_and_eer_0(corpus, store, tmp_path):
    out = tmp_path / "report.json"
    report = _run_cli("teachers", "--cuts", str(corpus.manifest), "--store", str(store),
                      "--labels", str(corpus.labels_file), "--out", str(out))
    # logits rank every positive above every negative -> AP 1 in every class
    assert report["teachers"]["beats"]["map"]["map"] == pytest.approx(1.0)
    assert report["teachers"]["beats"]["map"]["num_classes_scored"] == len(corpus.targets[0])
    # embeddings sit 0.01 from their speaker's centre -> every target trial outscores every non-target
    assert report["teachers"]["ecapa"]["eer"]["eer"] == 0.0
    assert report["labels"]["source"] == "events"
    assert report["counts"]["num_cuts"] == len(corpus.cut_ids)
    assert json.loads(out.read_text()) == report


def test_shuffled_teachers_score_clearly_worse(corpus, shuffled_store):
    config = EvalConfig(cuts=(str(corpus.manifest),), stores=(str(shuffled_store),), labels=str(corpus.labels_file))
    report = evaluate(config).report
    # outputs of other cuts: ranking of labels and speakers is broken
    assert report["teachers"]["beats"]["map"]["map"] < 0.9
    assert report["teachers"]["ecapa"]["eer"]["eer"] > 0.15


def test_map_equals_metric_on_the_constructed_arrays(corpus, shuffled_store):
    from mt2kd.eval._tagging import mean_average_precision

    config = EvalConfig(cuts=(str(corpus.manifest),), stores=(str(shuffled_store),), labels=str(corpus.labels_file))
    report = evaluate(config).report
    permutation = np.random.default_rng(5).permutation(len(corpus.cut_ids))  # as in the fixture
    expected, _ = mean_average_precision(corpus.targets, corpus.logits[permutation])
    assert report["teachers"]["beats"]["map"]["map"] == pytest.approx(expected)


def test_generated_trials_cover_all_pairs_of_tiny_corpus(corpus, store):
    report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),),
                                 labels=str(corpus.labels_file))).report
    # 4 speakers x C(3, 2) = 12 target pairs; C(12, 2) - 12 = 54 non-target pairs (fewer than asked)
    assert (report["trials"]["num_target"], report["trials"]["num_nontarget"]) == (12, 54)
    assert report["trials"]["source"] == "generated"


def test_trials_file_and_class_indices(corpus, store, tmp_path):
    trials = tmp_path / "trials"
    ids = corpus.cut_ids
    # one target trial scored above one non-target trial -> EER 0
    write_trials([(ids[0], ids[1], True), (ids[0], ids[3], False)], trials)
    report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),), trials=str(trials),
                                 labels=str(corpus.labels_file))).report
    assert report["trials"] == {"source": "file", "trials_file": str(trials), "num_target": 1, "num_nontarget": 1,
                                "num_trials_same_cut_dropped": 0}
    assert report["teachers"]["ecapa"]["eer"]["eer"] == 0.0


def test_no_events_uses_teacher_pseudo_labels(unlabelled_corpus, make_store, tmp_path):
    store = make_store(tmp_path / "s.zarr", unlabelled_corpus)
    report = evaluate(EvalConfig(cuts=(str(unlabelled_corpus.manifest),), stores=(str(store),))).report
    assert report["labels"]["source"] == "teacher_pseudo_labels"
    # sigmoid(logit) > 0.5 is exactly the constructed positives, so the labels are the events
    assert report["labels"]["num_positive_labels"] == int(unlabelled_corpus.targets.sum())
    assert report["teachers"]["beats"]["map"]["map"] == pytest.approx(1.0)


def test_cuts_missing_from_store_are_counted(corpus, make_store, tmp_path):
    missing = tuple(corpus.cut_ids[:2])
    store = make_store(tmp_path / "partial.zarr", corpus, skip=missing)
    report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),),
                                 labels=str(corpus.labels_file))).report
    assert report["counts"]["num_cuts_in_store"] == len(corpus.cut_ids) - 2
    assert report["teachers"]["beats"]["map"]["num_cuts_missing"] == 2
    assert report["teachers"]["ecapa"]["eer"]["num_trials_skipped"] > 0


def test_unknown_event_name_is_a_clean_cli_error(corpus, store, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\n")
    result = CliRunner().invoke(main, ["eval", "teachers", "--cuts", str(corpus.manifest), "--store", str(store),
                                       "--labels", str(labels)])
    assert result.exit_code == 1
    assert f"must be in the label list '{labels}'" in result.output  # names the label file


def test_table_output(corpus, store):
    result = CliRunner().invoke(main, ["eval", "teachers", "--cuts", str(corpus.manifest), "--store", str(store),
                                       "--labels", str(corpus.labels_file)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = {line.split(" : ")[0].strip(): line.split(" : ")[1] for line in result.output.splitlines()}
    assert lines["teachers.beats.map.map"] == "1.0000"
    assert lines["labels.source"] == "events"
    # all separators in one column
    assert len({line.index(" : ") for line in result.output.splitlines()}) == 1


def test_two_stores_read_as_one(corpus, make_store, tmp_path):
    half = tuple(corpus.cut_ids[:6])
    first = make_store(tmp_path / "a.zarr", corpus, skip=tuple(corpus.cut_ids[6:]))
    second = make_store(tmp_path / "b.zarr", corpus, skip=half)
    report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(first), str(second)),
                                 labels=str(corpus.labels_file))).report
    assert report["counts"]["num_cuts_in_store"] == len(corpus.cut_ids)
    assert report["teachers"]["beats"]["map"]["map"] == pytest.approx(1.0)
    assert report["teachers"]["ecapa"]["eer"]["eer"] == 0.0


def test_max_cuts_limits_the_set(corpus, store):
    report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),), max_cuts=6,
                                 labels=str(corpus.labels_file))).report
    assert report["counts"]["num_cuts"] == 6
    # first 6 cuts = 2 speakers x 3: C(3,2) * 2 = 6 target pairs, 3 * 3 = 9 non-target pairs
    assert (report["trials"]["num_target"], report["trials"]["num_nontarget"]) == (6, 9)


def test_config_travels_in_the_report(corpus, store):
    config = EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),), labels=str(corpus.labels_file), seed=7)
    assert EvalConfig.from_dict(evaluate(config).report["config"]) == config


def test_store_without_tagging_teacher_still_scores_speakers(corpus, make_store, tmp_path):
    store = make_store(tmp_path / "no_beats.zarr", corpus, teachers=("whisper", "ecapa"))
    report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),),
                                 labels=str(corpus.labels_file))).report
    assert report["labels"]["source"] is None
    assert report["teachers"]["beats"]["map"]["map"] is None
    assert report["teachers"]["ecapa"]["eer"]["eer"] == 0.0


def test_a_store_holding_none_of_the_cuts_is_refused(corpus, make_store, tmp_path):
    # only the teachers are scored, from the store: nothing would be (eval kd scores a student regardless)
    other = make_store(tmp_path / "other.zarr", corpus, skip=tuple(corpus.cut_ids))
    result = CliRunner().invoke(main, ["eval", "teachers", "--cuts", str(corpus.manifest), "--store", str(other)])
    assert result.exit_code == 1, result.output
    assert "must hold teacher outputs for the cuts" in result.output
    assert str(other) in result.output and str(corpus.manifest) in result.output


@pytest.mark.parametrize(("kind", "message"), [
    ("notgz", "is named .gz, so it must be gzip-compressed"),
    ("recordings", "must hold cuts. Got a Recording manifest"),
])
def test_a_manifest_of_the_wrong_kind_is_named(corpus, store, tmp_path, kind, message):
    import gzip

    from lhotse import CutSet, RecordingSet

    path = tmp_path / f"{kind}.jsonl.gz"
    if kind == "notgz":
        path.write_bytes(gzip.decompress(corpus.manifest.read_bytes()))
    else:
        RecordingSet.from_recordings(c.recording for c in CutSet.from_file(corpus.manifest)).to_file(path)
    result = CliRunner().invoke(main, ["eval", "teachers", "--cuts", str(path), "--store", str(store)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert message in result.output and str(path) in result.output


def test_num_classes_counts_the_label_list_next_to_the_output_width(corpus, store, tmp_path):
    labels = tmp_path / "longer-labels.txt"
    labels.write_text("\n".join([*corpus.labels, "wind", "bird"]) + "\n")
    report = _run_cli("teachers", "--cuts", str(corpus.manifest), "--store", str(store), "--labels", str(labels))
    assert report["labels"]["num_classes"] == len(corpus.labels) + 2
    assert report["labels"]["num_outputs"] == len(corpus.labels)
    assert "must follow the tagging teacher's class order" in report["labels"]["classes_note"]
    plain = _run_cli("teachers", "--cuts", str(corpus.manifest), "--store", str(store),
                     "--labels", str(corpus.labels_file))
    assert plain["labels"]["num_classes"] == plain["labels"]["num_outputs"] == len(corpus.labels)
    assert "classes_note" not in plain["labels"]


@pytest.mark.parametrize("command", ["teachers", "kd"])
def test_scores_from_random_teachers_say_so(corpus, make_store, tmp_path, command):
    random = make_store(tmp_path / f"random-{command}.zarr", corpus, attrs={"random_teachers": True})
    args = ["--cuts", str(corpus.manifest), "--store", str(random), "--labels", str(corpus.labels_file)]
    if command == "kd":
        args += ["--checkpoint", str(_tiny_checkpoint(corpus, tmp_path))]
    report = _run_cli(command, *args)
    assert report["random_teachers"] is True and str(random) in report["random_teachers_note"]
    table = CliRunner().invoke(main, ["eval", command, *args]).output
    assert "random_teachers_note" in table.splitlines()[1] and "not real labels" in table
    plain = _run_cli("teachers", "--cuts", str(corpus.manifest), "--store", str(make_store(
        tmp_path / f"real-{command}.zarr", corpus)), "--labels", str(corpus.labels_file))
    assert plain["random_teachers"] is False and "random_teachers_note" not in plain


def _tiny_checkpoint(corpus, folder):
    import dataclasses

    from mt2kd.train import Student, StudentConfig
    from mt2kd.train._checkpoint import save_checkpoint

    config = dataclasses.replace(StudentConfig.preset("tiny"), teacher_frame_dim=corpus.frames_dim,
                                 num_classes=len(corpus.labels), embedding_dim=corpus.embedding_dim, sv_block=2)
    return save_checkpoint({"step": 0, "student_config": config.to_dict(), "model": Student(config).state_dict()},
                           folder / "exp", keep_last=1)
