"""Epoch sampler and loader: deterministic order, rank sharding, resuming, worker-independence."""

import numpy as np
import pytest
import torch

from cordaseg.data.datasets import DatasetConfig, build_dataset
from cordaseg.data.loader import EpochSampler, make_loader
from cordaseg.data.synth import generate_tree


def test_order_depends_on_seed_and_epoch_only():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    again = EpochSampler(10, seed=3)
    again.set_epoch(2)
    assert first == list(again)
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in first} == {2}
    sampler.set_epoch(3)
    assert [i for _, i in sampler] != [i for _, i in first]
    assert [i for _, i in EpochSampler(10, shuffle=False)] == list(range(10))


@pytest.mark.parametrize(("drop_last", "per_rank"), [(False, 4), (True, 3)])
def test_ranks_partition_the_epoch(drop_last, per_rank):
    shards = [list(EpochSampler(11, seed=1, rank=r, world_size=3, drop_last=drop_last)) for r in range(3)]
    assert all(len(s) == per_rank for s in shards)
    indices = [i for shard in shards for _, i in shard]
    if drop_last:
        assert len(set(indices)) == 9  # the uneven tail is dropped, nothing repeats
    else:
        assert set(indices) == set(range(11))  # padded by repeating the start of the order


def test_start_index_resumes_the_same_order():
    full = EpochSampler(12, seed=5, rank=1, world_size=2)
    full.set_epoch(4)
    resumed = EpochSampler(12, seed=5, rank=1, world_size=2)
    resumed.set_epoch(4, start_index=4)
    assert list(resumed) == list(full)[4:] and len(resumed) == 2
    with pytest.raises(ValueError, match="rank 2"):
        EpochSampler(4, rank=2, world_size=2)


def test_batches_are_identical_with_and_without_workers(tmp_path):
    root = generate_tree("gta5", tmp_path / "gta", 4, size=(48, 24), seed=4)
    cfg = DatasetConfig(format="gta5", root=str(root), resize=(64, 32), crop=(32, 32), flip=True)
    batches = {}
    for workers in (0, 2):
        loader = make_loader(build_dataset(cfg, train=True, seed=6), batch_size=2, workers=workers, seed=1,
                             start_index=0, epoch=1)
        assert loader.persistent_workers == (workers > 0)
        epochs = []
        for epoch in (1, 2):
            loader.sampler.set_epoch(epoch)
            epochs.append([b for b in loader])
        batches[workers] = epochs
    for serial, parallel in zip(batches[0], batches[2]):
        assert len(serial) == len(parallel) == 2
        for a, b in zip(serial, parallel):
            assert a["image"].shape == (2, 3, 32, 32) and a["label"].shape == (2, 32, 32)
            assert a["name"] == b["name"]
            for key in ("image", "label", "depth", "original_size"):
                torch.testing.assert_close(a[key], b[key])
    first_epoch = np.concatenate([b["index"].numpy() for b in batches[0][0]])
    second_epoch = np.concatenate([b["index"].numpy() for b in batches[0][1]])
    assert sorted(first_epoch) == sorted(second_epoch) == [0, 1, 2, 3]
    assert not torch.equal(batches[0][0][0]["image"], batches[0][1][0]["image"])


def test_loader_workers_fork_after_opencv_work_in_the_main_process(tmp_path):
    # OpenCV's thread pool does not survive fork(): a worker forked after the main process ran a
    # multi-threaded OpenCV call used to wait forever. Run it in a subprocess so a hang fails the
    # test instead of stopping the suite.
    import subprocess
    import sys

    root = generate_tree("gta5", tmp_path / "gta", 4, size=(48, 24), seed=4)
    script = f"""
import cv2, numpy as np
from cordaseg.data.datasets import DatasetConfig, build_dataset
from cordaseg.data.loader import make_loader
assert cv2.getNumThreads() == 1
cv2.resize(np.random.rand(2000, 3000).astype(np.float32), (1500, 1000))  # work in the main process
cfg = DatasetConfig(format="gta5", root={str(root)!r}, resize=(64, 32), crop=(32, 32))
loader = make_loader(build_dataset(cfg, train=True, seed=6), batch_size=2, workers=2, seed=1,
                     start_index=0, epoch=1)
print(sum(len(b["name"]) for b in loader))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"
