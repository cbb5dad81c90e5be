"""The training loop: data readers and batching, resume, NaN, best-checkpoint selection, and `simtool train`."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import random
import re
from pathlib import Path

import pytest
import torch
from conftest import WORDS
from safetensors.torch import load_file

from simtool.errors import SimtoolError
from simtool.training import (
    NonFiniteLossError,
    StepInfo,
    TrainConfig,
    TrainingInterrupted,
    batches_without_duplicates,
    epoch_batches,
    list_checkpoints,
    read_training_rows,
    scan_training_file,
    train,
    training_columns,
)
from tests.conftest import run_cli as run


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    # A numeric suffix keeps them distinct; the duplicate tests add repeats on purpose.
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 10))) + f" {i}" for i in range(n)]


def write_txt(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_triplets(path: Path, n: int, header: tuple[str, ...] = ("sent0", "sent1", "hard_neg")) -> Path:
    columns = [sentences(n, seed) for seed in range(len(header))]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(zip(*columns, strict=True))
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def config(tmp_path: Path, model: Path, data: Path, name: str, **overrides) -> TrainConfig:
    settings = {
        "recipe": "simcse-unsup",
        "data": str(data),
        "output": str(tmp_path / name),
        "model": str(model),
        "pooling": "cls",
        "batch_size": 8,
        "mini_batch_size": 4,
        "epochs": 2,
        "lr": 1e-3,
        "save_steps": 3,
        "shuffle_buffer": 16,  # smaller than the file: the shuffle state must survive a resume too
        **overrides,
    }
    return TrainConfig(**settings)


# --------------------------------------------------------------------------- data


def test_batches_never_repeat_a_sentence_and_late_rows_are_not_lost() -> None:
    rows = [("a", "b"), ("c", "a"), ("d", "e"), ("f", "g"), ("b", "h"), ("i", "j"), ("k", "l"), ("m", "n")]
    batches = list(batches_without_duplicates(iter(rows), 3))
    assert all(len(b) == 3 for b in batches)
    for batch in batches:
        texts = [t for row in batch for t in row]
        assert len(texts) == len(set(texts))
    # ("c", "a") and ("b", "h") waited for a later batch instead of being dropped.
    assert batches == [[("a", "b"), ("d", "e"), ("f", "g")], [("c", "a"), ("b", "h"), ("i", "j")]]
    assert list(batches_without_duplicates(iter([("x",)] * 5), 2)) == []  # never two distinct rows


def test_readers_stream_txt_gz_and_jsonl_and_epochs_are_reproducible(tmp_path: Path) -> None:
    lines = sentences(30)
    gz = tmp_path / "s.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[:15]) + "\n\n  \n" + "\n".join(lines[15:]) + "\n")  # blank lines are skipped
    assert scan_training_file(gz, "simcse-unsup") == (("text",), 30)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"sent0": a, "sent1": b}) + "\n" for a, b in itertools.pairwise(lines)))
    assert scan_training_file(jsonl, "simcse-sup") == (("sent0", "sent1"), 29)
    tsv = tmp_path / "t.tsv"  # TSV is read without quoting: a lone quote is text
    tsv.write_text('sent0\tsent1\thard_neg\nhe said "hi\tshe left\tnobody\n')
    assert list(read_training_rows(tsv, training_columns(tsv, "simcse-sup"))) == [('he said "hi', "she left", "nobody")]

    def epoch(e: int) -> list:
        return list(epoch_batches(gz, ("text",), 8, seed=5, epoch=e, shuffle_buffer=10))

    assert epoch(0) == epoch(0) and epoch(0) != epoch(1)
    assert len(epoch(0)) == 3 and sorted(r for b in epoch(0) for r in b) != [(t,) for t in lines[:24]]


# --------------------------------------------------------------------------- resume, NaN, evaluation


def test_resume_after_interrupt_or_crash_gives_the_uninterrupted_weights(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_txt(tmp_path / "train.txt", sentences(40))  # 5 steps per epoch, 10 in all
    reference = train(config(tmp_path, tiny_bert, data, "reference"), progress=False)
    assert reference.steps == 10 and reference.epochs_completed == 2

    # Ctrl-C semantics at step 7 (in the second epoch): a checkpoint of step 7, then resume.
    stopped = config(tmp_path, tiny_bert, data, "stopped")
    with pytest.raises(TrainingInterrupted, match="stopped at step 7"):
        train(stopped, on_step=lambda info: info.step == 7, progress=False)
    assert [s for s, _ in list_checkpoints(Path(stopped.output))] == [6, 7]
    stopped.resume = True
    resumed = train(stopped, progress=False)
    assert resumed.resumed_from == 7 and resumed.steps == 10
    assert_same_weights(Path(reference.output), Path(stopped.output))

    # A crash after step 5 loses steps 4-5: the run restarts from the step-3 checkpoint.
    def crash(info: StepInfo) -> None:
        if info.step == 5:
            raise RuntimeError("power cut")

    crashed = config(tmp_path, tiny_bert, data, "crashed")
    with pytest.raises(RuntimeError, match="power cut"):
        train(crashed, on_step=crash, progress=False)
    crashed.resume = True
    assert train(crashed, progress=False).resumed_from == 3
    assert_same_weights(Path(reference.output), Path(crashed.output))
    # The log keeps one line per step (the lost steps' lines are replaced) and its losses are the reference's.
    log = [json.loads(line) for line in (Path(crashed.output) / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(line) for line in (Path(reference.output) / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 11))
    assert [e["loss"] for e in log] == [e["loss"] for e in ref_log]
    again = train(crashed, progress=False)  # resuming a finished run trains nothing and reports it
    assert (again.steps, again.resumed_from, again.final_loss) == (10, 10, reference.final_loss)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_txt(tmp_path / "train.txt", sentences(40))
    cfg = config(tmp_path, tiny_bert, data, "nan", save_steps=2, epochs=1)

    def poison(info: StepInfo) -> None:
        if info.step == 2:  # after the step-2 checkpoint a weight turns NaN, as after an exploding update
            with torch.no_grad():
                next(info.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*step-00000002"):
        train(cfg, on_step=poison, progress=False)
    out = Path(cfg.output)
    assert [s for s, _ in list_checkpoints(out)] == [2]
    good = weights(out / "checkpoints" / "step-00000002")
    assert all(torch.isfinite(t).all() for t in good.values())
    assert not (out / "modules.json").exists()  # no final model was published


def test_evaluation_keeps_the_best_checkpoint_as_the_final_model(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_txt(tmp_path / "train.txt", sentences(40))
    scores = iter([10.0, 30.0, 50.0, 20.0, 40.0, 45.0])  # baseline, then steps 1..5
    cfg = config(tmp_path, tiny_bert, data, "eval", epochs=1, eval_steps=1, save_steps=1, save_total_limit=10)
    result = train(cfg, evaluate=lambda model: next(scores), progress=False)
    assert result.baseline_score == 10.0 and (result.best_score, result.best_step) == (50.0, 2)
    assert [e["score"] for e in result.evals] == [30.0, 50.0, 20.0, 40.0, 45.0]
    out = Path(cfg.output)
    assert_same_weights(out, out / "checkpoints" / "step-00000002")
    assert json.loads((out / "checkpoints" / "best" / "best.json").read_text()) == {"step": 2, "score": 50.0}


# --------------------------------------------------------------------------- the command


def test_train_command_sup_json_and_the_model_loads_with_plain_sentence_transformers(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_triplets(tmp_path / "nli.csv", 24)
    sts = tmp_path / "dev.csv"
    with open(sts, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "score"])
        for i, (a, b) in enumerate(zip(sentences(12, 3), sentences(12, 4), strict=True)):
            w.writerow([a, b, i % 5])
    out = tmp_path / "model"
    argv = ["train", "--recipe", "simcse-sup", "--data", str(data), "--output", str(out), "--model", str(tiny_bert)]
    argv += ["--batch-size", "8", "--mini-batch-size", "2", "--margin", "0.2", "--max-steps", "3", "--json"]
    code, stdout, err = run(capsys, *argv, "--eval-sts", str(sts), "--eval-steps", "2")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["steps"] == 3 and summary["world_size"] == 1 and summary["best_step"] in (2, 3)
    assert [e["step"] for e in summary["evals"]] == [2, 3] and summary["baseline_score"] is not None

    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(str(out), device="cpu")
    vectors = loaded.encode(["the cat", "a dog"])
    assert vectors.shape == (2, 32)
    # --max-seq-length (default 32) truncates training batches; the published model keeps its own limit.
    assert loaded.max_seq_length == SentenceTransformer(str(tiny_bert), device="cpu").max_seq_length == 64
    saved = json.loads((out / "training_summary.json").read_text())
    assert saved["config"]["margin"] == 0.2 and saved["config"]["recipe"] == "simcse-sup"
    # `simtool eval` scores the published model exactly as the best evaluation during training did.
    code, stdout, err = run(capsys, "eval", "sts", str(sts), "--model", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[0])["main_score"] == pytest.approx(summary["best_score"], abs=1e-9)


@pytest.mark.parametrize(
    ("recipe", "content", "extra", "message"),
    [
        ("simcse-unsup", "", [], r"train\.txt: no training rows"),
        ("simcse-unsup", "\n  \n", [], r"train\.txt: no training rows"),
        ("simcse-sup", "sent0,sent1\nonly one field\n", [], r"train\.csv:2: expected 2 fields, got 1"),
        ("simcse-sup", 'sent0,sent1\n"open quote,b\n', [], r"train\.csv:\d+: malformed row"),
        ("simcse-sup", '{"sent0": "a", "sent1": \n', [], r"train\.jsonl:1: malformed JSON"),
        ("simcse-sup", '{"sent0": "a", "sent1": "b"}\n{"sent0": "c"}\n', [], r"train\.jsonl:2: missing 'sent1'"),
        ("simcse-sup", "sent0,sent1\na,\n", [], r"train\.csv:2: empty 'sent1'"),
        ("simcse-sup", "one sentence\n", [], r"simcse-sup needs CSV/TSV/JSONL with columns sent0,sent1"),
        ("simcse-sup", "sent0,text\na,b\n", [], r"missing sent1"),
        ("simcse-unsup", "sent0,sent1,hard_neg\na,b,c\n", [], r"use --recipe simcse-sup"),
        ("simcse-unsup", "x\n" * 20, ["--batch-size", "8", "--mini-batch-size", "16"], r"larger than the batch"),
        ("simcse-unsup", "x\n" * 20, ["--batch-size", "8", "--mini-batch-size", "3"], r"not a multiple of"),
        ("simcse-unsup", "x\n" * 4, ["--batch-size", "8"], r"4 training rows, fewer than one batch"),
        ("simcse-simbert", "x\n", [], r"unknown --recipe 'simcse-simbert'"),
        ("simcse-unsup", "x\n", ["--margin", "3"], r"--margin must be in"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: str, content: str, extra: list, message: str
) -> None:
    suffix = ".jsonl" if content.startswith("{") else ".csv" if content.startswith("sent0") else ".txt"
    data = tmp_path / f"train{suffix}"
    data.write_text(content)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "train", "--recipe", recipe, "--data", str(data), "--output", str(out), *extra)
    assert code == 2
    assert stdout == "" and len(err.strip().splitlines()) == 1 and err.startswith("simtool: error: ")
    assert re.search(message, err), err
    assert not out.exists()  # nothing written


def test_existing_output_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_txt(tmp_path / "t.txt", sentences(70))
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    code, _, err = run(capsys, "train", "--recipe", "simcse-unsup", "--data", str(data), "--output", str(out))
    assert code == 2 and "pass --resume" in err
    code, _, err = run(capsys, "train", "--recipe", "simcse-unsup", "--data", str(data), "-o", str(out), "--resume")
    assert code == 2 and "no checkpoint to resume from" in err
    with pytest.raises(SimtoolError, match="distill_weight needs teacher=MODEL"):
        TrainConfig(recipe="simcse-unsup", data="x", output="y", distill_weight=1.0).validate()
