"""DAFormer's rare-class sampling on a generated GTA5 tree: the class probabilities against the
formula computed independently from the label files, the drawn frequencies of a large fixed-seed
sample, the statistics cache, resume and sharding of the sampler, and the re-crops."""

from __future__ import annotations

import functools
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from cordaseg.config import ConfigError
from cordaseg.data.datasets import DatasetConfig, RareClassSamplingConfig, build_dataset, find_samples
from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN
from cordaseg.data.loader import make_loader
from cordaseg.data.rare_class import (
    MAX_RECROPS,
    STATS_FILE,
    RareClassDataset,
    RareClassSampler,
    class_counts,
    class_table,
    rare_class_source,
    stats_path,
)
from cordaseg.data.synth import generate_tree
from cordaseg.engine.config import load_train_config, validate


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return generate_tree("gta5", tmp_path_factory.mktemp("rcs") / "gta5", 8, size=(128, 64), seed=3)


def config(tree, **rcs) -> DatasetConfig:
    return DatasetConfig(format="gta5", root=str(tree), depth="none", resize=(128, 64), crop=(64, 64),
                         rare_class_sampling=RareClassSamplingConfig(enabled=True, **rcs))


def counts_by_hand(tree) -> list[dict[int, int]]:
    """Per frame {train ID: pixels}, read with PIL and the Cityscapes ID table."""
    frames = []
    for path in sorted((tree / "labels").glob("*.png")):
        ids = CITYSCAPES_ID_TO_TRAIN[np.asarray(Image.open(path))]
        values, pixels = np.unique(ids, return_counts=True)
        frames.append({int(v): int(n) for v, n in zip(values, pixels) if v != 255})
    return frames


@pytest.mark.parametrize("temperature", [0.01, 0.1])
def test_class_probabilities_equal_the_formula(tree, tmp_path, temperature):
    cfg = config(tree)
    counts = class_counts(cfg, find_samples(cfg), tmp_path / "stats.json", progress=False)
    assert counts == counts_by_hand(tree)
    table = class_table(counts, temperature, min_pixels=0)

    totals: dict[int, int] = {}
    for frame in counts_by_hand(tree):
        for c, n in frame.items():
            totals[c] = totals.get(c, 0) + n
    all_pixels = sum(totals.values())
    # P(c) = exp((1 - f_c) / T) / sum_c' exp((1 - f_c') / T), with the exponent shifted by its
    # maximum so that exp stays finite at T = 0.01 (the ratio is unchanged).
    shift = max((1 - n / all_pixels) / temperature for n in totals.values())
    weights = {c: math.exp((1 - n / all_pixels) / temperature - shift) for c, n in totals.items()}
    expected = {c: w / sum(weights.values()) for c, w in weights.items()}
    assert table.classes.tolist() == sorted(totals)
    assert table.probabilities.tolist() == pytest.approx([expected[c] for c in sorted(totals)], rel=1e-12, abs=1e-300)
    assert table.probabilities.sum() == pytest.approx(1.0)
    for c, frames in zip(table.classes, table.frames):
        assert frames.tolist() == [i for i, frame in enumerate(counts) if frame.get(int(c), 0) > 0]


@pytest.mark.filterwarnings("ignore:rare-class sampling")
@pytest.mark.parametrize("temperature", [0.01, 0.1])
def test_drawn_frequencies_match_the_probabilities(tree, tmp_path, temperature):
    cfg = config(tree)
    counts = class_counts(cfg, find_samples(cfg), tmp_path / "stats.json", progress=False)
    table = class_table(counts, temperature, min_pixels=50)
    sampler = RareClassSampler(200_000, table=table, seed=11)
    frames, classes, positions = sampler.draws()
    assert positions.tolist() == list(range(200_000))
    # Every draw's frame holds more than min_pixels of its class.
    assert all(counts[f].get(c, 0) > 50 for f, c in zip(frames[:2000], classes[:2000]))
    observed = np.array([(classes == c).mean() for c in table.classes])
    # 200,000 draws: the standard error of a frequency is at most 0.0012.
    np.testing.assert_allclose(observed, table.probabilities, atol=0.006)
    expected_frames = np.zeros(len(counts))
    for p, candidates in zip(table.probabilities, table.frames):
        expected_frames[candidates] += p / len(candidates)
    np.testing.assert_allclose(np.bincount(frames, minlength=len(counts)) / len(frames), expected_frames, atol=0.006)


def test_a_class_without_candidate_frames_is_left_out_and_the_rest_renormalised(tree, tmp_path):
    cfg = config(tree)
    counts = class_counts(cfg, find_samples(cfg), tmp_path / "s.json", progress=False)
    full = class_table(counts, 0.1, min_pixels=0)
    with pytest.warns(UserWarning, match="never drawn"):
        table = class_table(counts, 0.1, min_pixels=50)
    dropped = [c for c in full.classes if c not in table.classes]
    assert dropped and all(max(frame.get(int(c), 0) for frame in counts) <= 50 for c in dropped)
    kept = np.isin(full.classes, table.classes)
    np.testing.assert_allclose(table.probabilities, full.probabilities[kept] / full.probabilities[kept].sum(),
                               rtol=1e-12)


@pytest.mark.filterwarnings("ignore:rare-class sampling")
def test_sampler_resumes_shards_and_changes_with_the_epoch(tree, tmp_path):
    cfg = config(tree)
    table = class_table(class_counts(cfg, find_samples(cfg), tmp_path / "s.json", progress=False), 0.1, 50)
    whole = RareClassSampler(40, table=table, seed=5)
    keys = list(whole)
    assert len(keys) == 40 and all(k[0] == 0 for k in keys)
    whole.set_epoch(0, start_index=17)
    assert list(whole) == keys[17:]  # the resume point of an epoch
    whole.set_epoch(1)
    assert [k[1:] for k in whole] != [k[1:] for k in keys]
    ranks = [RareClassSampler(40, table=table, seed=5, rank=r, world_size=2) for r in range(2)]
    shards = [list(s) for s in ranks]
    assert sorted(shards[0] + shards[1], key=lambda k: k[2]) == keys  # disjoint draw positions, same draws
    assert len(ranks[0]) == 20


def test_statistics_are_cached_in_the_dataset_root_and_reused(tree, tmp_path, monkeypatch):
    cfg = config(tree)
    assert stats_path(cfg, tmp_path) == tree / STATS_FILE
    records = find_samples(cfg)
    first = class_counts(cfg, records, tree / STATS_FILE, progress=False)
    cached = json.loads((tree / STATS_FILE).read_text())
    assert len(cached["frames"]) == len(records)

    import cordaseg.data.rare_class as module

    def fail(*args):
        raise AssertionError("a cached label was read again")

    monkeypatch.setattr(module, "label_class_counts", fail)
    assert class_counts(cfg, records, tree / STATS_FILE, progress=False) == first
    monkeypatch.undo()
    os.utime(records[0].label, ns=(1, 1))  # a changed file is counted again
    calls = []
    monkeypatch.setattr(module, "label_class_counts", lambda c, p: calls.append(p) or first[0])
    class_counts(cfg, records, tree / STATS_FILE, progress=False)
    assert calls == [records[0].label]


def test_read_only_root_caches_in_the_run_folder(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert stats_path(config(tree), tmp_path / "run") == tmp_path / "run" / "source_class_stats.json"
    assert stats_path(config(tree, stats_file=str(tmp_path / "x.json")), tmp_path) == tmp_path / "x.json"


def test_recrops_until_the_class_shows_and_keys_are_deterministic(tree, tmp_path):
    cfg = config(tree, min_pixels=100, min_crop_ratio=4.0)
    base = build_dataset(cfg, train=True, seed=0)
    dataset = RareClassDataset(base, min_pixels=100, min_crop_ratio=4.0)
    counts = class_counts(cfg, base.records, tmp_path / "s.json", progress=False)
    frame, cls = next((i, c) for i, frame in enumerate(counts) for c, n in frame.items() if 400 < n < 2000)
    item = dataset[(0, frame, 7, cls)]
    assert np.array_equal(item["label"], dataset[(0, frame, 7, cls)]["label"])
    shown = [int((base[(0, frame, 7, a)]["label"] == cls).sum()) for a in range(MAX_RECROPS + 1)]
    first_good = next((a for a, n in enumerate(shown[:MAX_RECROPS]) if n > 400), MAX_RECROPS)
    assert np.array_equal(item["label"], base[(0, frame, 7, first_good)]["label"])
    assert len({tuple(base[(0, frame, g, 0)]["label"].flatten()[:64].tolist()) for g in range(6)}) > 1
    never = RareClassDataset(base, min_pixels=10**6, min_crop_ratio=1.0)[(0, frame, 7, cls)]
    assert np.array_equal(never["label"], base[(0, frame, 7, MAX_RECROPS)]["label"])  # the last crop
    assert np.array_equal(dataset[(0, frame)]["label"], base[(0, frame)]["label"])  # plain keys pass through


@pytest.mark.filterwarnings("ignore:rare-class sampling")
def test_loader_batches_with_the_rare_class_sampler(tree, tmp_path):
    cfg = config(tree, min_pixels=50, stats_file=str(tmp_path / "s.json"))
    dataset, factory = rare_class_source(build_dataset(cfg, train=True, seed=0), tmp_path, progress=False)
    loader = make_loader(dataset, 2, workers=0, seed=1, sampler_factory=factory)
    assert isinstance(loader.sampler, RareClassSampler) and len(loader) == 4
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["label"].shape == (2, 64, 64)
    assert isinstance(factory, functools.partial)


def test_only_the_labelled_source_is_sampled_by_class(tree):
    overrides = [f"source.root={tree}", "target.root=" + str(tree), "target.format=gta5",
                 "target.rare_class_sampling.enabled=true", "adaptation.method=dacs", "model.arch=deeplab",
                 "val=null", "source.depth=none", "target.depth=none"]
    with pytest.raises(ConfigError, match="target.rare_class_sampling"):
        validate(load_train_config(None, overrides))
    overrides.remove("target.rare_class_sampling.enabled=true")
    with pytest.raises(ConfigError, match="use_labels"):
        validate(load_train_config(None, [*overrides, "source.rare_class_sampling.enabled=true",
                                          "source.use_labels=false"]))
    with pytest.raises(ConfigError, match="temperature"):
        RareClassSamplingConfig(temperature=0)
