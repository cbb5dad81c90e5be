"""The staged-directory helper: a whole new directory or the old one, never a half-written one or leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtool.atomic import atomic_dir, publish_new_dir


def _staging(target: Path) -> list[Path]:
    return list(target.parent.glob(f".{target.name}.staging-*"))


def test_success_swaps_the_new_directory_in(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        assert staging.is_dir() and staging.parent == tmp_path and not target.exists()
        (staging / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as staging:
        (staging / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert _staging(target) == []


def test_an_exception_leaves_the_previous_target_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert _staging(target) == []


def test_an_exception_before_any_target_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "deeper" / "out"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target):
        raise KeyboardInterrupt
    assert not target.exists() and _staging(target) == []


def test_publish_new_dir_refuses_to_replace_what_exists(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with atomic_dir(target, publish=publish_new_dir) as staging:  # an empty directory may be taken over
        (staging / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(OSError), atomic_dir(target, publish=publish_new_dir) as staging:
        (staging / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert _staging(target) == []


def test_stale_staging_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "out"
    stale = tmp_path / ".out.staging-999999999-abc"  # no such pid
    stale.mkdir()
    with atomic_dir(target) as staging:
        assert not stale.exists()
        (staging / "a.txt").write_text("one")
    assert _staging(target) == []
