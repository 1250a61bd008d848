"""Checkpoints are atomic: a failed write leaves the last good one readable and unchanged."""

import pytest
import torch

from modelswarms.errors import RunError
from modelswarms.runs import checkpoint as ck


def test_round_trip(tmp_path):
    path = tmp_path / "c.safetensors"
    gen = torch.Generator().manual_seed(3)
    tensors = {"x": torch.randn(3, 4), "rng": gen.get_state(), "n": torch.arange(3)}
    ck.save_checkpoint(path, tensors, {"step": 0.5, "g_util": float("-inf")})
    back, meta = ck.load_checkpoint(path)
    assert all(torch.equal(tensors[k], back[k]) for k in tensors)
    assert meta == {"step": 0.5, "g_util": float("-inf")}


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, {"x": torch.ones(2)}, {"i": 1})
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)  # a partial file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(RunError, match="No space left on device.*previous checkpoint is intact"):
        ck.save_checkpoint(path, {"x": torch.zeros(2)}, {"i": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left
    tensors, meta = ck.load_checkpoint(path)
    assert meta == {"i": 1}


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, {"x": torch.ones(200)}, {"i": 1})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RunError, match="c.safetensors: checkpoint unreadable"):
        ck.load_checkpoint(path)


def test_background_writer_writes_what_was_submitted_and_raises_its_errors(tmp_path,
                                                                           monkeypatch):
    path = tmp_path / "c.safetensors"
    writer = ck.CheckpointWriter(path)
    state = {"x": torch.arange(6.0), "n": torch.tensor([1])}
    meta = {"i": 1, "nested": {"a": [1]}}
    writer.submit(state, meta)
    state["x"].add_(100)  # the next iteration moves the swarm while the write runs
    meta["nested"]["a"].append(2)
    writer.wait()
    back, back_meta = ck.load_checkpoint(path)
    assert torch.equal(back["x"], torch.arange(6.0)) and back_meta == {"i": 1,
                                                                       "nested": {"a": [1]}}
    writer.submit(state, {"i": 2})  # the buffers are reused
    writer.wait()
    assert torch.equal(ck.load_checkpoint(path)[0]["x"], torch.arange(6.0) + 100)

    def full_disk(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    writer.submit({"x": torch.zeros(6), "n": torch.tensor([3])}, {"i": 3})
    with pytest.raises(RunError, match="No space left on device.*previous checkpoint is intact"):
        writer.wait()  # or the next submit: the error reaches the search loop's thread
    writer.wait()  # raised once
    assert ck.load_checkpoint(path)[1] == {"i": 2}
