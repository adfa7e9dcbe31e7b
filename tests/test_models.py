"""The network (docs/method.md, "Network") and the import of reference checkpoints, number for number."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch

from cordaseg.errors import CheckpointError
from cordaseg.models.checkpoint import (
    convert_file,
    convert_reference,
    load_init_weights,
    load_model,
    load_state,
    model_config_of,
    model_payload,
)
from cordaseg.models.convert import (
    detect_variant,
    project_to_reference,
    reference_model_config,
)
from cordaseg.models.corda import ASPPClassifier, ModelConfig, build_model, param_groups
from cordaseg.runtime.files import atomic_save
from refweights import (
    OUTPUT_NAMES,
    TINY_SIZE,
    TINY_VECTORS,
    VARIANTS,
    fabricate_state,
    output_vectors,
    read_key_table,
    reference_input,
    reference_vectors,
    tiny_input,
    tiny_model,
)

REF_OUTPUT_NAMES = OUTPUT_NAMES
PARAM_COUNTS = {  # the reference models': (all, trainable)
    "gta": (48_015_074, 47_909_730),
    "synthia": (46_619_049, 46_513_705),
    "noatt": (44_245_136, 44_139_792),
    "multitask": (43_974_800, 43_869_456),
}
TINY = ModelConfig(backbone_depth=18, backbone_width=8, head_width=16)


def _meta_model(cfg: ModelConfig):
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_equal_the_reference(variant):
    model = _meta_model(reference_model_config(variant))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == PARAM_COUNTS[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_keys_convert_load_strictly_and_map_back(variant):
    table = read_key_table(variant)
    state = {k: torch.zeros(s) for k, s, _ in table}
    assert detect_variant(state) == variant
    payload = convert_reference(state)
    cfg = model_config_of(payload)
    model = _meta_model(cfg)
    target = model.state_dict()
    assert set(payload["model"]) == set(target)
    assert all(tuple(payload["model"][k].shape) == tuple(target[k].shape) for k in target)
    back = project_to_reference(target, cfg.arch)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: s for k, s, _ in table}
    # frozen / trainable split is the reference's too
    kinds = {k: kind for k, _, kind in table}
    for name, p in model.named_parameters():
        ref = project_to_reference({name: p}, cfg.arch)
        ref_key = next(iter(ref))
        assert kinds[ref_key] == ("param-trainable" if p.requires_grad else "param-frozen"), ref_key


@pytest.mark.parametrize("variant", VARIANTS)
def test_tampered_reference_state_is_refused_naming_the_key(variant):
    table = read_key_table(variant)
    state = {k: torch.zeros(s) for k, s, _ in table}
    missing = dict(state)
    del missing["layer4.2.conv2.weight"]
    with pytest.raises(CheckpointError, match=r"layer4\.2\.conv2\.weight"):
        convert_reference(missing)
    extra = dict(state, **{"heads.S.extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"heads\.S\.extra\.weight"):
        convert_reference(extra)
    wrong = dict(state)
    wrong["layer2.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv2\.weight"):
        convert_reference(wrong)


def test_ambiguous_keys_ask_for_variant():
    with pytest.raises(CheckpointError, match="--variant"):
        detect_variant({"conv1.weight": torch.zeros(64, 3, 7, 7)})


@pytest.mark.parametrize("size,expected", [((512, 512), (65, 65)), ((512, 1024), (65, 129))])
def test_output_size_is_one_eighth_with_ceil_pooling(size, expected):
    model = build_model(TINY).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *size))
    for name, value in out.items():
        assert value is not None, name
        assert tuple(value.shape[-2:]) == expected


def assert_vectors(got: dict, expected: dict) -> None:
    """Both modes, every output the reference has and no other, each summary value to 1e-9."""
    for mode, outputs in expected.items():
        assert set(got[mode]) == set(outputs), mode
        for name, expect in outputs.items():
            assert got[mode][name]["shape"] == expect["shape"], (mode, name)
            for key in ("sum", "abs_sum", "at_0_0_3_5", "at_1_last_-1_-1"):
                torch.testing.assert_close(got[mode][name][key], expect[key], rtol=1e-9, atol=1e-9,
                                           msg=lambda m, key=key, name=name, mode=mode: f"{mode} {name} {key}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_network_reproduces_reference_test_vectors(variant):
    payload = convert_reference(fabricate_state(variant))
    model = build_model(model_config_of(payload)).double()
    load_state(model, payload["model"])
    assert_vectors(output_vectors(model, reference_input()), reference_vectors()["variants"][variant])


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_network_reproduces_its_recorded_vectors(variant):
    # The path of the test above (rule weights through the importer, float64, eval and train) on a
    # narrow ResNet-50, against vectors recorded from this implementation (tests/refweights.py).
    recorded = json.loads(TINY_VECTORS.read_text())
    assert recorded["size"] == TINY_SIZE
    assert_vectors(output_vectors(tiny_model(variant), tiny_input()), recorded["variants"][variant])


def test_convert_save_load_model_reproduces_outputs(tmp_path):
    cfg = ModelConfig(backbone_depth=18, backbone_width=8, head_width=16, initial_semantic="conv")
    reference = build_model(cfg)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.05)
    ref_state = project_to_reference(reference.state_dict(), cfg.arch)
    src = tmp_path / "reference.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ref_state.items()},
                "ema_model": ref_state, "optimizer": {}, "iteration": 1234, "config": {}}, src)
    summary = convert_file(src, tmp_path / "ours.pth")
    assert summary["variant"] == "synthia" and summary["teacher"] and summary["iteration"] == 1234
    # the project format always loads with weights_only=True
    torch.load(tmp_path / "ours.pth", weights_only=True)
    x = torch.randn(2, 3, 64, 96)
    for path in (src, tmp_path / "ours.pth"):
        loaded, loaded_cfg = load_model(path)
        assert not loaded.training and loaded_cfg == cfg
        with torch.no_grad():
            expected, got = reference.eval()(x), loaded(x)
        for name, value in expected.items():
            assert torch.equal(value, getattr(got, name)), name


def test_cli_convert(tmp_path):
    cfg = reference_model_config("multitask", backbone_depth=18, backbone_width=8)
    state = project_to_reference(build_model(cfg).state_dict(), cfg.arch)
    torch.save(state, tmp_path / "mt.pth")
    result = subprocess.run(
        [sys.executable, "-m", "cordaseg.cli", "convert", str(tmp_path / "mt.pth"), "--out", str(tmp_path / "o.pth")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert '"variant": "multitask"' in result.stdout
    _, loaded_cfg = load_model(tmp_path / "o.pth")
    assert loaded_cfg.arch == "multitask"


class _Opaque:  # a pickled object that weights_only loading refuses
    pass


def test_full_pickles_need_explicit_trust(tmp_path):
    cfg = reference_model_config("deeplab", backbone_depth=18, backbone_width=8)
    state = project_to_reference(build_model(cfg).state_dict(), cfg.arch)
    assert "layer5.conv2d_list.3.bias" in state
    path = tmp_path / "old.pth"
    torch.save({"model": state, "config": _Opaque()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="trust-pickle"):
        load_model(path)
    model, loaded_cfg = load_model(path, trust_pickle=True)
    assert loaded_cfg.arch == "deeplab"


def test_aspp_four_branches_add_exactly_the_last_two():
    torch.manual_seed(0)
    two = ASPPClassifier(8, 3, summed=2)
    four = ASPPClassifier(8, 3, summed=4)
    four.load_state_dict(two.state_dict())
    x = torch.randn(2, 8, 20, 20)
    extra = four.branches[2](x) + four.branches[3](x)
    torch.testing.assert_close(four(x), two(x) + extra)
    model2 = build_model(TINY).eval()
    model4 = build_model(TINY, aspp_branches=4).eval()
    model4.load_state_dict(model2.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model2(x), model4(x)
    assert (a.semantic - b.semantic).abs().max() > 0
    torch.testing.assert_close(a.depth_initial, b.depth_initial, rtol=0, atol=0)  # no ASPP there


@pytest.mark.parametrize("prefix,with_classifier", [("", True), ("Scale.", False)])
def test_deeplab_init_files_load_the_backbone_only(prefix, with_classifier, tmp_path):
    cfg = reference_model_config("gta", backbone_depth=18, backbone_width=8, head_width=16)
    donor = build_model(cfg)
    with torch.no_grad():
        for p in donor.backbone.parameters():
            p.normal_()
    ref = {k: v for k, v in project_to_reference(
        {f"backbone.{k}": v for k, v in donor.backbone.state_dict().items()}, "corda").items()
        if not k.endswith("num_batches_tracked")}  # old caffe-converted files have no counters
    if with_classifier:
        ref["layer5.conv2d_list.0.weight"] = torch.zeros(21, 64, 3, 3)
    path = tmp_path / "init.pth"
    torch.save({prefix + k: v for k, v in ref.items()}, path)
    model = build_model(cfg)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    report = load_init_weights(model, path)
    assert len(report["loaded"]) == len(ref) - with_classifier
    assert report["skipped"] == (["layer5.conv2d_list.0.weight"] if with_classifier else [])
    for k, v in donor.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    for k, v in model.state_dict().items():
        if k in heads_before:
            assert torch.equal(v, heads_before[k]), k
    bad = dict(ref)
    bad.pop("layer3.1.conv1.weight")
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"layer3\.1\.conv1\.weight"):
        load_init_weights(build_model(cfg), path)


def test_param_groups_backbone_1x_heads_10x():
    model = build_model(TINY)
    groups = param_groups(model, 2.5e-4)
    assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-3]
    grouped = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    backbone = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups[0]["params"]} <= backbone
    assert not ({id(p) for p in groups[1]["params"]} & backbone)


def test_backbone_bn_affine_frozen_and_optional_frozen_statistics():
    x = torch.randn(2, 3, 48, 48)
    for freeze in (False, True):
        model = build_model(TINY, freeze_bn_stats=freeze).train()
        bn = model.backbone.bn1
        assert not bn.weight.requires_grad and not bn.bias.requires_grad
        before = bn.running_mean.clone()
        model(x)
        assert torch.equal(bn.running_mean, before) == freeze
        head_bn = model.initial_branches["semantic"][0].bn1
        assert head_bn.weight.requires_grad and head_bn.training


def test_variants_outputs():
    expect = {
        "corda": set(REF_OUTPUT_NAMES.values()),
        "multitask": {"semantic", "depth"},
        "deeplab": {"semantic"},
        "reference_noatt": {"semantic", "depth"},
    }
    x = torch.randn(1, 3, 32, 32)
    for arch, names in expect.items():
        out = build_model(TINY, arch=arch).eval()(x)
        assert {n for n, v in out.items() if v is not None} == names
    no_attention = build_model(TINY, attention=False)
    assert not hasattr(no_attention, "distillation")
    out = no_attention.eval()(x)
    assert all(v is not None for _, v in out.items())


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_save({"a": torch.ones(2)}, path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_model_payload_round_trip(tmp_path):
    model = build_model(TINY)
    atomic_save(model_payload(model, TINY), tmp_path / "m.pth")
    loaded, cfg = load_model(tmp_path / "m.pth")
    assert cfg == TINY
    with pytest.raises(CheckpointError, match="teacher"):
        load_model(tmp_path / "m.pth", weights="teacher")
