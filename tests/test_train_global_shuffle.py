"""``train --global-shuffle``: each epoch is a seeded permutation of the whole file, and resume reproduces it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from simtool.errors import SimtoolError
from simtool.training import train
from simtool.training.data import epoch_batches
from tests.test_train_loop import assert_same_weights, config, sentences, write_txt


def _rows(path: Path, epoch: int, seed: int = 7, memory: str = "2KiB") -> list[tuple[str, ...]]:
    batches = epoch_batches(
        path, ("sent0", "sent1"), 4, seed=seed, epoch=epoch, shuffle_buffer=0, global_shuffle=memory
    )
    return [row for batch in batches for row in batch]


def test_each_epoch_is_a_seeded_permutation_of_the_whole_file(tmp_path: Path) -> None:
    pairs = list(zip(sentences(200, 1), sentences(200, 2), strict=True))
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("sent0", "sent1"), *pairs])
    first = _rows(path, epoch=0)  # 2 KiB forces several chunks: a real two-pass shuffle
    assert sorted(first) == sorted(pairs)  # the header stays a header; every row comes back once
    assert first != pairs and first == _rows(path, epoch=0)
    assert _rows(path, epoch=1) != first
    assert _rows(path, epoch=0, seed=8) != first


def test_resume_reproduces_the_globally_shuffled_run(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_txt(tmp_path / "train.txt", sentences(40))
    reference = train(config(tmp_path, tiny_bert, data, "reference", global_shuffle="1KiB"), progress=False)
    stopped = config(tmp_path, tiny_bert, data, "stopped", global_shuffle="1KiB")
    with pytest.raises(Exception, match="stopped at step 7"):
        train(stopped, on_step=lambda info: info.step == 7, progress=False)
    stopped.resume = True
    assert train(stopped, progress=False).steps == reference.steps
    assert_same_weights(Path(reference.output), Path(stopped.output))
    buffered = train(config(tmp_path, tiny_bert, data, "buffered"), progress=False)
    assert buffered.final_loss != reference.final_loss  # a different order, so the option did something


def test_bad_memory_is_one_line(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_txt(tmp_path / "train.txt", sentences(40))
    with pytest.raises(SimtoolError, match="global"):
        train(config(tmp_path, tiny_bert, data, "bad", global_shuffle="lots"), progress=False)
