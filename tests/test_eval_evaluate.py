"""evaluate_segmentation on in-memory datasets: the paper protocol, variants, outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cordaseg.config import ConfigError
from cordaseg.data.labels import IGNORE_INDEX
from cordaseg.evaluation.evaluate import evaluate_segmentation, write_csv, write_json
from cordaseg.evaluation.inference import InferenceConfig
from cordaseg.models.corda import ModelConfig, build_model
from cordaseg.models.output import CordaOutput


class OracleNet(nn.Module):
    """Reads the class from image channel 0 and the depth from channel 1: a perfect model."""

    def forward(self, x: torch.Tensor) -> CordaOutput:
        classes = x[:, 0].round().long().clamp(0, 18)
        semantic = F.one_hot(classes, 19).permute(0, 3, 1, 2).float() * 10  # (B, 19, H, W)
        return CordaOutput(semantic=semantic, depth=x[:, 1:2], depth_source=x[:, 1:2] * 2)


def oracle_items(count: int = 3, size: tuple[int, int] = (12, 16)) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(count):
        label = torch.randint(0, 19, size, generator=generator)
        depth = torch.rand(size, generator=generator) * 4 + 1.5
        image = torch.stack([label.float(), depth, torch.zeros(size)])
        label[0, :3] = IGNORE_INDEX
        depth[1, :2] = 1.0  # invalid depth pixels
        items.append({"image": image, "label": label, "depth": depth, "name": f"img{i}"})
    return items


def test_perfect_model_scores_100_and_exact_depth():
    result = evaluate_segmentation(OracleNet(), oracle_items(), device="cpu", progress=False, keep_samples=2)
    assert result.miou == {19: 100.0, 16: 100.0, 13: 100.0}
    assert result.pixel_accuracy == 100.0
    assert result.num_images == 3
    assert result.depth["depth"]["abs_rel"] == 0.0 and result.depth["depth"]["delta1"] == 100.0
    assert result.depth["depth"]["pixels"] == 3 * (12 * 16 - 2)
    assert result.depth["depth_source"]["delta1"] == 0.0  # twice the target: ratio 2
    assert len(result.samples) == 2 and result.samples[0].name == "img0"
    assert result.samples[0].prediction.shape == (12, 16)


def _manual_confusion(model, items, size_of) -> np.ndarray:
    matrix = np.zeros((19, 19), dtype=np.int64)
    with torch.no_grad():
        for item in items:
            logits = model(item["image"][None]).semantic
            label = size_of(item)
            logits = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=True)
            prediction = logits.argmax(1)[0].numpy()
            valid = label < 19
            np.add.at(matrix, (label[valid], prediction[valid]), 1)
    return matrix


def _tiny_items(count: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.randn(3, 32, 48, generator=generator) * 40,
            "label": torch.randint(0, 22, (64, 96), generator=generator).masked_fill(
                torch.rand(64, 96, generator=generator) < 0.1, IGNORE_INDEX),
            "name": f"frame{i}",
        }
        for i in range(count)
    ]


def test_full_resolution_protocol_matches_manual_computation_and_batching():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone_depth=18, head_width=32, backbone_width=16)).train()
    items = _tiny_items()
    expected = _manual_confusion(model.eval(), items, lambda item: item["label"].numpy())
    model.train()
    one = evaluate_segmentation(model, items, device="cpu", progress=False)
    two = evaluate_segmentation(model, items, device="cpu", batch_size=2, progress=False)
    np.testing.assert_array_equal(one.confusion, expected)
    # A batched convolution may round differently: allow a near-tie pixel or two to flip.
    assert two.confusion.sum() == expected.sum() and np.abs(two.confusion - expected).sum() <= 4
    assert model.training  # mode restored
    assert one.depth == {}  # the items carry no depth ground truth
    all_invalid = [dict(item, depth=torch.ones(64, 96)) for item in items[:1]]
    assert evaluate_segmentation(model, all_invalid, device="cpu", progress=False).depth == {}


def test_input_resolution_variant_resizes_labels_to_the_input():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone_depth=18, head_width=32, backbone_width=16)).eval()
    items = _tiny_items(2)
    # 2x downscale by pixel centres: rows/cols 1, 3, 5, ... (like PIL NEAREST)
    expected = _manual_confusion(model, items, lambda item: item["label"].numpy()[1::2, 1::2])
    result = evaluate_segmentation(model, items, device="cpu", output_size="input", progress=False)
    np.testing.assert_array_equal(result.confusion, expected)
    assert result.confusion.sum() == sum(int((i["label"][1::2, 1::2] < 19).sum()) for i in items)


def test_tta_and_bf16_run_and_count_the_same_pixels():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone_depth=18, head_width=32, backbone_width=16)).eval()
    items = _tiny_items(2)
    plain = evaluate_segmentation(model, items, device="cpu", progress=False)
    tta = evaluate_segmentation(model, items, device="cpu", progress=False, inference=InferenceConfig(
        scales=(0.75, 1.0), flip=True, sliding_window=True, window=(32, 32), stride=(16, 32)))
    bf16 = evaluate_segmentation(model, items, device="cpu", precision="bf16", progress=False)
    assert tta.confusion.sum() == plain.confusion.sum() == bf16.confusion.sum()
    with pytest.raises(ConfigError, match="output_size"):
        evaluate_segmentation(model, items, device="cpu", output_size="half", progress=False)


def test_json_and_csv_outputs(tmp_path):
    result = evaluate_segmentation(OracleNet(), oracle_items(), device="cpu", progress=False)
    data = json.loads(write_json(result, tmp_path / "scores.json").read_text())
    assert data["miou"] == {"19": 100.0, "16": 100.0, "13": 100.0}
    assert data["iou"]["road"] == 100.0 and len(data["iou"]) == 19
    assert np.asarray(data["confusion_matrix"]).shape == (19, 19)
    rows = list(csv.reader((write_csv(result, tmp_path / "scores.csv")).open()))
    assert rows[0] == ["class", "train_id", "iou", "in_19", "in_16", "in_13"]
    terrain = next(r for r in rows if r[0] == "terrain")
    assert terrain[3:] == ["1", "0", "0"]
    assert ["mIoU13", "", "100.0000"] in rows
    table = result.format_table()
    assert "mIoU (16 classes): 100.00" in table and "depth head depth:" in table


def _noisy_oracle_items(count: int = 5) -> list[dict]:
    """Items whose image carries a corrupted copy of the label, so OracleNet makes mistakes."""
    items = oracle_items(count)
    generator = torch.Generator().manual_seed(7)
    for item in items:
        noisy = item["label"].clamp(max=18).float()
        flip = torch.rand(noisy.shape, generator=generator) < 0.3
        noisy[flip] = torch.randint(0, 19, (int(flip.sum()),), generator=generator).float()
        item["image"][0] = noisy
    return items


def _distributed_worker(rank: int, world_size: int, port: int, result_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = evaluate_segmentation(OracleNet(), _noisy_oracle_items(), device="cpu", distributed=True,
                                       progress=False)
        if rank == 0:
            torch.save({"confusion": result.confusion, "num_images": result.num_images, "depth": result.depth},
                       result_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_with_two_gloo_processes_equals_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(2, port, str(tmp_path / "r.pt")), nprocs=2, join=True)
    reduced = torch.load(tmp_path / "r.pt", weights_only=False)
    single = evaluate_segmentation(OracleNet(), _noisy_oracle_items(), device="cpu", progress=False)
    assert reduced["num_images"] == single.num_images == 5  # 3 + 2 shards, nothing repeated
    np.testing.assert_array_equal(reduced["confusion"], single.confusion)
    assert 0 < np.trace(single.confusion) < single.confusion.sum()
    assert reduced["depth"]["depth"] == pytest.approx(single.depth["depth"])
