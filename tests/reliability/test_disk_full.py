"""A full disk (ENOSPC) while a stage or a table is written: the error surfaces, the previous output
stays usable under its own name, and no temporary is left behind. (A full disk inside the loop,
resumed afterwards: tests/reliability/test_fault_injection.py.)"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import stage_cfg
from rlhf_ops import artifacts
from rlhf_ops.artifacts import write_json_atomic, write_table
from rlhf_ops.launcher import run_stage
from rlhf_ops.models import load_policy

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def sft(tiny_assets, output, **kw):
    return run_stage("sft", cfg=stage_cfg("sft", max_steps=1), inputs={"policy": tiny_assets["policy"],
                     "data": tiny_assets["sft"]}, output=output, seed=0, progress=False, **kw)


def hashes(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def assert_previous_checkpoint_usable(out: Path, before: dict[str, str]) -> None:
    assert hashes(out) == before, "the previous checkpoint is untouched"
    assert artifacts.is_finished(out) and load_policy(out) is not None, "and loads"
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name)) == [out.name], \
        "no .tmp / .old left beside it"


@pytest.fixture
def finished_sft(tiny_assets, tmp_path):
    out = tmp_path / "sft"
    sft(tiny_assets, out)
    return out, hashes(out)


def test_disk_full_while_saving_weights_keeps_the_previous_checkpoint(tiny_assets, finished_sft, monkeypatch):
    out, before = finished_sft
    import transformers.modeling_utils as mu

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # a few bytes made it before the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(mu, "safe_save_file", full_disk)
    with pytest.raises(OSError) as caught:
        sft(tiny_assets, out, overwrite=True)
    assert caught.value.errno == errno.ENOSPC and "sft.tmp" in str(caught.value)
    assert_previous_checkpoint_usable(out, before)


def test_disk_full_at_the_rename_keeps_the_previous_checkpoint(tiny_assets, finished_sft, monkeypatch):
    out, before = finished_sft
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name == "sft.tmp":  # the new checkpoint going into place
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left on device"):
        sft(tiny_assets, out, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_previous_checkpoint_usable(out, before)


def test_disk_full_while_writing_a_table_keeps_the_previous_table(tmp_path, monkeypatch):
    path = write_table(pd.DataFrame({"a": [1, 2, 3]}), tmp_path / "store.parquet")

    def full_disk(self, target, **kw):
        Path(target).write_bytes(b"PAR1")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_table(pd.DataFrame({"a": [4]}), path)
    assert pd.read_parquet(path)["a"].tolist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["store.parquet"], "no .tmp left"


def test_disk_full_while_writing_json_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "LATEST_GOOD"
    write_json_atomic(path, {"iteration": 0})
    real_write_bytes = Path.write_bytes  # what the one atomic writer of small files uses

    def full_disk(self, data, *a, **kw):
        real_write_bytes(self, data[:5], *a, **kw)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_json_atomic(path, {"iteration": 1})
    monkeypatch.setattr(Path, "write_bytes", real_write_bytes)
    assert json.loads(path.read_text()) == {"iteration": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST_GOOD"], "no .tmp left"
