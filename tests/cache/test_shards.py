"""Append-only shards: a crash loses only uncommitted rows, ranks see each other's commits."""

from __future__ import annotations

import numpy as np
import torch

from lightning_kd.cache.layout import RecordLayout
from lightning_kd.cache.shards import Shards
from lightning_kd.core.features import FeatureRequest, Features

REQUEST = FeatureRequest(hidden_states=True)


def _rows(layout: RecordLayout, seed: int, size: int = 3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(size, 5, dtype=torch.long)
    mask[0, 3:] = 0
    batch = {"input_ids": torch.randint(5, 50, (size, 5), generator=g) * mask, "attention_mask": mask}
    features = Features(logits=torch.randn(size, 2, generator=g), hidden_states=(torch.randn(size, 5, 4, generator=g),) * 2)
    return layout.encode(features, batch)


def _layout() -> RecordLayout:
    probe = Features(logits=torch.zeros(1, 2), hidden_states=(torch.zeros(1, 2, 4),) * 2)
    return RecordLayout.from_features(probe, REQUEST, top_k=None, dtype="float32")


def _assert_same(read, written):
    assert read.counts.tolist() == written.counts.tolist()
    for name in read.tokens.dtype.names:
        np.testing.assert_array_equal(read.tokens[name], written.tokens[name])
    np.testing.assert_array_equal(read.examples["logits"], written.examples["logits"])


def test_a_crash_between_append_and_commit_keeps_the_committed_rows(tmp_path):
    layout = _layout()
    writer = Shards(tmp_path, layout, rank=0)
    committed = _rows(layout, seed=0)
    writer.append(np.array([10, 11, 12]), committed)
    assert writer.commit() == 3
    writer.append(np.array([13, 14, 15]), _rows(layout, seed=1))  # appended, never committed
    # The crash: the process dies here. Its record files keep the uncommitted bytes (and a torn
    # partial record), and an index write was interrupted before its rename.
    with open(next(tmp_path.glob("rank0/*.tokens.bin")), "ab") as tokens:
        tokens.write(b"\x01" * (layout.token_dtype.itemsize // 2))
    (tmp_path / "rank0" / f".{writer.run}.00001.index.npy.1234.tmp").write_bytes(b"half an index")
    del writer

    reader = Shards(tmp_path, layout, rank=0)
    found, locations = reader.locate(np.array([10, 11, 12, 13, 14, 15]))
    assert found.tolist() == [True, True, True, False, False, False]
    _assert_same(reader.read(locations[found]), committed)
    assert len(reader) == 3


def test_a_process_reads_its_own_rows_before_committing(tmp_path):
    layout = _layout()
    shards = Shards(tmp_path, layout, rank=0)
    rows = _rows(layout, seed=2)
    shards.append(np.array([1, 2, 3]), rows)
    found, locations = shards.locate(np.array([3, 1, 2]))
    assert found.all()
    _assert_same(shards.read(locations), rows.select([2, 0, 1]))
    assert not list(tmp_path.glob("rank0/*.index.npy")), "nothing is durable before a commit"


def test_ranks_and_later_runs_see_every_committed_row(tmp_path):
    layout = _layout()
    rank0, rank1 = Shards(tmp_path, layout, rank=0), Shards(tmp_path, layout, rank=1)
    rows0, rows1 = _rows(layout, seed=3), _rows(layout, seed=4)
    rank0.append(np.array([0, 1, 2]), rows0)
    rank1.append(np.array([3, 4, 5]), rows1)
    rank0.commit()
    assert not rank1.locate(np.array([0]))[0].any(), "another rank's rows appear only after a refresh"
    rank1.close()
    rank0.refresh()
    found, locations = rank0.locate(np.array([3, 4, 5, 0]))
    assert found.all()
    _assert_same(rank0.read(locations[:3]), rows1)
    rank0.close()
    later = Shards(tmp_path, layout, rank=0)
    assert len(later) == 6 and {p.parent.name for p in tmp_path.glob("rank*/*.index.npy")} == {"rank0", "rank1"}
    assert later.run != rank0.run, "every run appends to files of its own"
