"""``simtool train --recipe roformer-sim`` then ``simtool generate`` end to end on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl

PAIRS = [("the cat is big", "a big cat"), ("the dog runs fast", "a fast dog"), ("red car", "a red car")] * 4


@pytest.mark.timeout(120)
def test_train_then_generate_through_the_cli(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"sent0": a, "sent1": b} for a, b in PAIRS])
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "train", "--recipe", "roformer-sim", "--data", str(data), "--output", str(out),
        "--model", str(tiny_bert), "--batch-size", "2", "--mini-batch-size", "1", "--max-steps", "6",
        "--lr", "1e-3", "--noise", "--shuffle-buffer", "0", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 6
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert set(log[-1]["parts"]) == {"seq2seq", "contrastive"}
    assert (out / "retrieval" / "modules.json").is_file()
    assert "UniLMHead" not in (out / "retrieval" / "modules.json").read_text()

    code, stdout, err = run_cli(capsys, "generate", "the cat is big", "--model", str(out), "-n", "2",
                                "--candidates", "4", "--max-length", "16", "--seed", "1", "--json")  # fmt: skip
    assert code == 0, err
    obj = json.loads(stdout)
    assert obj["input"] == "the cat is big" and len(obj["results"]) <= 2
    _, stdout2, _ = run_cli(capsys, "generate", "the cat is big", "--model", str(out), "-n", "2",
                                "--candidates", "4", "--max-length", "16", "--seed", "1", "--json")  # fmt: skip
    assert stdout2 == stdout  # seeded: deterministic

    # generate on a model without an LM head: one line naming the directory.
    code, _, err = run_cli(capsys, "generate", "x", "--model", str(out / "retrieval"))
    assert code == 2 and "no LM head" in err and str(out / "retrieval") in err and "Traceback" not in err
