"""Where `serve --workers N` keeps its workers' counts, and what it cleans up."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from api.supervisor import metrics_directory


def test_a_new_directory_per_supervisor_and_orphans_of_killed_ones_removed(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = tmp_path / f"billing-metrics-{gone.pid}-abc"
    alive = tmp_path / f"billing-metrics-{os.getpid()}-def"
    unknown = tmp_path / "billing-metrics-xyz"
    for path in (orphan, alive, unknown):
        path.mkdir()
    made, owned = metrics_directory()
    assert owned and os.path.basename(made).startswith(f"billing-metrics-{os.getpid()}-")
    assert os.path.isdir(made)
    assert not orphan.exists() and alive.exists() and unknown.exists()


def test_an_operators_directory_is_emptied_of_counts_and_kept(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "counts"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"old")
    (given / "README").write_text("mine")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    assert metrics_directory() == (str(given), False)
    assert sorted(p.name for p in given.iterdir()) == ["README"]
