"""Transformer backbones (MiT, DINOv2), the DAFormer decoder and CorDA's modules on top: outputs,
gradients, the adaptation step, optimiser groups, pretrained folders and DAFormer / MIC
checkpoint conversion, all on tiny CPU models."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

pytest.importorskip("transformers")

from cordaseg.adaptation import AdaptationConfig, adaptation_step  # noqa: E402
from cordaseg.errors import CheckpointError, CordasegError  # noqa: E402
from cordaseg.models import convert_mmseg  # noqa: E402
from cordaseg.models.checkpoint import load_model, model_config_of  # noqa: E402
from cordaseg.models.corda import (  # noqa: E402
    CordaNet,
    ModelConfig,
    build_model,
    param_groups,
    reference_multiplicity,
)
from cordaseg.models.output import OUTPUT_NAMES  # noqa: E402
from cordaseg.models.transformer_backbones import DINOV2_VARIANTS, MIT_VARIANTS, evenly_spaced_layers  # noqa: E402

# One tiny configuration per backbone family; no stochastic layers, so gradients are exact.
FAMILIES = {
    "mit": dict(backbone="mit_b0", backbone_width=8, backbone_blocks=(1, 2, 1, 1)),
    "dinov2": dict(backbone="dinov2_s", backbone_width=8, backbone_blocks=(4,)),
    "resnet": dict(backbone="resnet", backbone_depth=18, backbone_width=8),
}
TINY_HEADS = dict(head_width=16, decoder_width=16, drop_path_rate=0.0, decoder_dropout=0.0)
PRESENT = {
    "corda": set(OUTPUT_NAMES),
    "multitask": {"semantic", "depth"},
    "deeplab": {"semantic"},
}
SIZE = 64


def tiny_config(family: str, decoder: str = "daformer", arch: str = "corda", **overrides) -> ModelConfig:
    return ModelConfig(arch=arch, decoder=decoder, **{**FAMILIES[family], **TINY_HEADS, **overrides})


def expected_size(family: str, decoder: str, size: int = SIZE) -> int:
    if family == "resnet":  # ceil-mode pooling: 64 -> 17 at stride 4, 9 at stride 8
        return {"daformer": 17, "deeplab": 9}[decoder]
    return -(-size // (4 if decoder == "daformer" else 32))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("decoder", ["daformer", "deeplab"])
@pytest.mark.parametrize("arch", ["corda", "multitask", "deeplab"])
def test_outputs_shapes_and_strides(family, decoder, arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(family, decoder, arch)).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x)
        features = model.encode(x)
    h = expected_size(family, decoder)
    for name, value in out.items():
        if name in PRESENT[arch]:
            channels = 19 if name.startswith("semantic") else 1
            assert value.shape == (2, channels, h, h), name
        else:
            assert value is None, name
    assert model.output_stride == (4 if decoder == "daformer" else model.feature_stride)
    if family == "resnet":
        assert features.shape == (2, model.backbone.out_channels, 9, 9)  # stride 8, ceil
    else:
        assert features.shape == (2, model.backbone.out_channels[-1], 2, 2)  # stride 32


def test_transformer_pyramids_have_strides_4_to_32():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 60, 100)  # neither a multiple of 32 nor of DINOv2's patch 14
    for family in ("mit", "dinov2"):
        backbone = build_model(tiny_config(family)).backbone
        levels = backbone(x)
        assert [tuple(f.shape[-2:]) for f in levels] == [(15, 25), (8, 13), (4, 7), (2, 4)], family
        assert [f.shape[1] for f in levels] == list(backbone.out_channels)
    assert evenly_spaced_layers(12) == (3, 6, 9, 12) and evenly_spaced_layers(24) == (6, 12, 18, 24)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("decoder", ["daformer", "deeplab"])
@pytest.mark.parametrize("arch", ["corda", "deeplab"])
def test_gradient_reaches_every_trainable_parameter(family, decoder, arch):
    torch.manual_seed(0)
    # aspp_branches=4: with the reference's 2 (the default), branches 3 and 4 never reach an output
    model = build_model(tiny_config(family, decoder, arch, aspp_branches=4)).train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    g = torch.Generator().manual_seed(1)
    loss = sum((v * torch.randn(v.shape, generator=g)).mean() for _, v in out.items() if v is not None)
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    dead = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    if family == "dinov2":
        assert not model.backbone.encoder.embeddings.mask_token.requires_grad  # masked-image pretraining only


def _batch(seed: int = 0, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (2, size // 8, size // 8), generator=g)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)
    label[:, :3] = 255
    return {
        "source_image": torch.rand(2, 3, size, size, generator=g) * 255 - 115,
        "source_label": label,
        "target_image": torch.rand(2, 3, size, size, generator=g) * 255 - 115,
        "source_depth": 1.0 + 10 * torch.rand(2, size, size, generator=g),
        "target_depth": 1.0 + 10 * torch.rand(2, size, size, generator=g),
    }


@pytest.mark.parametrize(("arch", "method"), [("corda", "corda"), ("deeplab", "dacs")])
def test_adaptation_step_runs_with_a_tiny_mit_daformer_model(arch, method):
    torch.manual_seed(0)
    student = build_model(tiny_config("mit", "daformer", arch, drop_path_rate=0.1, decoder_dropout=0.1)).train()
    teacher = copy.deepcopy(student).set_stochastic(False)
    for p in teacher.parameters():
        p.requires_grad_(False)
    out = adaptation_step(student, teacher, _batch(), AdaptationConfig(method=method), 3,
                          torch.Generator().manual_seed(0))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
    if method == "corda":
        assert {"source_depth", "source_depth_initial", "target_depth", "target_depth_initial", "depth_weight_mean",
                "source_ce_initial", "target_ce_initial"} <= set(out.terms)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_set_stochastic_turns_dropout_and_drop_path_off_in_train_mode():
    torch.manual_seed(0)
    model = build_model(tiny_config("mit", drop_path_rate=0.5, decoder_dropout=0.5)).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # train-mode batch norm is deterministic: only the sampling can differ
        assert not torch.equal(model(x).semantic, model(x).semantic)
        model.set_stochastic(False).train()
        assert torch.equal(model(x).semantic, model(x).semantic)
        assert model.training and model.backbone.encoder.training


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("multiplicity", ["once", "reference"])
@pytest.mark.parametrize("no_decay_norms", [False, True])
def test_param_groups_cover_every_trainable_parameter_once(family, multiplicity, no_decay_norms):
    model = build_model(tiny_config(family))
    groups = param_groups(model, 6e-5, 10.0, multiplicity, no_decay_norms)
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in model.parameters() if p.requires_grad}
    heads = groups[-1]
    assert heads["name"] == "heads" and heads["lr"] == pytest.approx(6e-4) and heads["multiplicity"] == 1
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert not any(id(p) in backbone_ids for p in heads["params"])
    for g in groups[:-1]:
        assert g["lr"] == pytest.approx(6e-5) and all(id(p) in backbone_ids for p in g["params"])
    names = [g["name"] for g in groups]
    if family != "resnet":
        assert set(reference_multiplicity(model.backbone).values()) == {1}
        assert all(g["multiplicity"] == 1 for g in groups)
        assert names[0] == ("backbone" if multiplicity == "once" else "backbone_x1")
        assert ("backbone_norm" in names) == no_decay_norms
    if no_decay_norms and family != "resnet":
        norm_group = groups[names.index("backbone_norm")]
        assert norm_group["weight_decay"] == 0.0 and len(norm_group["params"]) > 0
    assert all("weight_decay" not in g for g in groups if g["name"] != "backbone_norm")


@pytest.mark.parametrize("family", ["mit", "dinov2"])
def test_pretrained_folder_and_file_round_trip(family, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(family)
    donor = build_model(cfg)
    donor.backbone.encoder.save_pretrained(tmp_path / "hf")
    for source in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        torch.manual_seed(1)  # another initialisation, overwritten by the weights
        model = build_model(cfg, pretrained=str(source))
        ours, theirs = model.backbone.state_dict(), donor.backbone.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), source
    wider = tiny_config(family, backbone_width=16, pretrained=str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="hidden_size"):
        build_model(wider)
    deeper = tiny_config(family, backbone_blocks=(8,) if family == "dinov2" else (2, 2, 2, 2))
    with pytest.raises(CheckpointError, match="missing"):
        build_model(deeper, pretrained=str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not found"):
        build_model(cfg, pretrained=str(tmp_path / "nowhere"))
    # Checkpoints carry every weight: loading one never reads the pretrained folder.
    assert model_config_of({"model_config": {**vars(cfg), "pretrained": "/gone"}}).pretrained == "/gone"


def test_pretrained_folder_of_another_family_is_refused(tmp_path):
    build_model(tiny_config("dinov2")).backbone.encoder.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="'dinov2' model, not 'segformer'"):
        build_model(tiny_config("mit", pretrained=str(tmp_path)))


def _mmseg_state(cfg: ModelConfig, seed: int) -> tuple[CordaNet, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # statistics that differ from the fresh values
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    return model, convert_mmseg.project_to_mmseg(model.state_dict(), cfg)


def test_mmseg_keys_follow_daformers_layout():
    cfg = tiny_config("mit", arch="deeplab")
    _, state = _mmseg_state(cfg, 0)
    for key in ("backbone.patch_embed1.proj.weight", "backbone.block1.0.attn.q.weight",
                "backbone.block1.0.attn.kv.weight", "backbone.block1.0.attn.sr.weight", "backbone.norm4.bias",
                "backbone.block2.1.mlp.dwconv.dwconv.weight", "decode_head.embed_layers.3.proj.weight",
                "decode_head.fuse_layer.aspp_modules.0.conv.weight",
                "decode_head.fuse_layer.aspp_modules.3.depthwise_conv.bn.running_var",
                "decode_head.fuse_layer.aspp_modules.1.pointwise_conv.conv.weight",
                "decode_head.fuse_layer.bottleneck.bn.num_batches_tracked", "decode_head.conv_seg.bias"):
        assert key in state, key
    assert not any(k.startswith("backbone.block4.0.attn.sr") for k in state)  # stage 4: no reduction
    hidden = MIT_VARIANTS["mit_b0"].hidden_sizes[0] * 8 // 64
    assert state["backbone.block1.0.attn.kv.weight"].shape == (2 * hidden, hidden)
    assert state["decode_head.embed_layers.0.proj.weight"].shape == (16, hidden)  # a linear layer
    assert state["decode_head.fuse_layer.bottleneck.conv.weight"].shape == (16, 4 * 16, 3, 3)
    assert state["decode_head.fuse_layer.aspp_modules.2.depthwise_conv.conv.weight"].shape == (64, 1, 3, 3)


def test_mmseg_checkpoint_round_trip_through_load_model(tmp_path):
    cfg = tiny_config("mit", arch="deeplab")
    student, student_state = _mmseg_state(cfg, 0)
    teacher, teacher_state = _mmseg_state(cfg, 1)
    imnet = {k: v for k, v in student_state.items() if k.startswith("backbone.")}
    file = {
        "meta": {"iter": 40000},
        "state_dict": {**{f"model.{k}": v for k, v in student_state.items()},
                       **{f"ema_model.{k}": v for k, v in teacher_state.items()},
                       **{f"imnet_model.{k}": v for k, v in imnet.items()}},
    }
    path = tmp_path / "iter_40000.pth"
    torch.save(file, path)
    x = torch.randn(2, 3, SIZE, SIZE)
    for weights, original in (("student", student), ("teacher", teacher)):
        model, loaded_cfg = load_model(path, weights=weights)
        assert (loaded_cfg.arch, loaded_cfg.decoder, loaded_cfg.num_classes, loaded_cfg.decoder_width) == (
            "deeplab", "daformer", 19, 16)
        with torch.no_grad():
            torch.testing.assert_close(model(x).semantic, original.eval()(x).semantic, rtol=0, atol=0)
    # A bare mmseg state dict (no wrapper) converts too, and maps back to the same tensors.
    payload = convert_mmseg.convert_mmseg_checkpoint({"state_dict": student_state})
    assert "teacher" not in payload
    back = convert_mmseg.project_to_mmseg(payload["model"], model_config_of(payload))
    assert back.keys() == student_state.keys() and all(torch.equal(back[k], student_state[k]) for k in back)


def test_published_mit_variants_are_recognised():
    for name in MIT_VARIANTS:
        with torch.device("meta"):
            cfg = ModelConfig(arch="deeplab", decoder="daformer", backbone=name)
            state = convert_mmseg.project_to_mmseg(CordaNet(cfg).state_dict(), cfg)
        inferred = convert_mmseg.infer_daformer_config(state)
        assert (inferred.backbone, inferred.backbone_width, inferred.backbone_blocks) == (name, 64, None)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape", "hrda", "unknown_prefix"])
def test_damaged_mmseg_checkpoints_are_refused_by_name(damage):
    cfg = tiny_config("mit", arch="deeplab")
    _, state = _mmseg_state(cfg, 0)
    state = dict(state)
    if damage == "missing":
        del state["backbone.block2.1.attn.kv.bias"]
        match = r"not filled: backbone\.encoder\.stages\.1\.blocks\.1\.attention\.[kv]_proj\.bias"
    elif damage == "extra":
        state["decode_head.fuse_layer.image_pool.1.conv.weight"] = torch.zeros(16, 64, 1, 1)
        match = r"not used: decode_head\.fuse_layer\.image_pool"
    elif damage == "shape":
        state["decode_head.conv_seg.weight"] = torch.zeros(19, 8, 1, 1)
        match = r"semantic_head\.conv\.weight"
    elif damage == "hrda":
        state["decode_head.scale_attention.conv_seg.weight"] = torch.zeros(1, 16, 1, 1)
        match = "HRDA"
    else:
        state = {f"model.{k}": v for k, v in state.items()} | {"mic.teacher.weight": torch.zeros(1)}
        match = r"mic\.teacher\.weight"
    with pytest.raises(CheckpointError, match=match):
        convert_mmseg.convert_mmseg_checkpoint({"state_dict": state})


def test_transformers4_column_matches_the_names_save_pretrained_writes(tmp_path):
    """transformers >= 5 saves Segformer weights under its 4.x names, which the table's second
    column must give; with transformers 4.x installed the saved names are the first column's."""
    cfg = tiny_config("mit", arch="deeplab")
    model = build_model(cfg)
    model.backbone.encoder.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = set(load_file(str(tmp_path / "model.safetensors")))
    spec = MIT_VARIANTS[cfg.backbone]
    layout = convert_mmseg.encoder_layout(model.backbone.encoder.state_dict())
    legacy = "transformers4" if layout == "transformers5" else layout
    rows = convert_mmseg.mit_rows(cfg.backbone_blocks, spec.sr_ratios, legacy)
    assert {t for row in rows for t in row.targets} == saved


def test_original_mit_weights_file_loads_into_the_backbone(tmp_path):
    cfg = tiny_config("mit", arch="deeplab")
    donor, state = _mmseg_state(cfg, 0)
    original = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    original["head.weight"] = torch.zeros(1000, 32)  # SegFormer's ImageNet classifier, skipped
    path = tmp_path / "mit_b0.pth"
    torch.save(original, path)
    torch.manual_seed(5)
    model = build_model(cfg, pretrained=str(path))
    for k, v in donor.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


def test_config_validation_and_missing_transformers(monkeypatch):
    with pytest.raises(ValueError, match="reference_noatt"):
        ModelConfig(arch="reference_noatt", decoder="daformer")
    with pytest.raises(ValueError, match="transformer backbones"):
        ModelConfig(pretrained="/somewhere")
    with pytest.raises(ValueError, match="attention heads"):
        build_model(tiny_config("mit", backbone_width=7))
    with pytest.raises(ValueError, match="multiple of 4 layers"):
        build_model(tiny_config("dinov2", backbone_blocks=(6,)))
    monkeypatch.setitem(sys.modules, "transformers", None)  # "not installed"
    with pytest.raises(CordasegError, match=r"pip install 'cordaseg\[depth\]'") as info:
        build_model(tiny_config("mit"))
    assert "\n" not in str(info.value)
    build_model(tiny_config("resnet"))  # the ResNet needs no transformers


def test_published_tables():
    assert MIT_VARIANTS["mit_b5"].depths == (3, 6, 40, 3) and MIT_VARIANTS["mit_b0"].hidden_sizes[0] == 32
    assert {k: (v.hidden_size, v.layers, v.heads) for k, v in DINOV2_VARIANTS.items()} == {
        "dinov2_s": (384, 12, 6), "dinov2_b": (768, 12, 12), "dinov2_l": (1024, 24, 16)}
    with torch.device("meta"):
        daformer = CordaNet(ModelConfig(arch="deeplab", decoder="daformer", backbone="mit_b5"))
    encoder = sum(p.numel() for p in daformer.backbone.parameters())
    assert round(encoder / 1e6, 1) == 81.4  # SegFormer's MiT-B5 encoder
    saved = {"model_config": {"backbone": "mit_b1", "backbone_blocks": [1, 1, 1, 1]}}  # as YAML / JSON give it
    assert model_config_of(saved).backbone_blocks == (1, 1, 1, 1)


def test_transformers_see_rgb_with_imagenet_mean_and_std():
    import numpy as np

    from cordaseg.data.normalization import normalize_rgb
    from cordaseg.models.transformer_backbones import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, ImageNetInput

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    project_input = torch.from_numpy(normalize_rgb(rgb))[None]  # (1, 3, H, W) BGR minus the caffe mean
    expected = (torch.from_numpy(rgb).permute(2, 0, 1)[None] / 255.0 - torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
                ) / torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    torch.testing.assert_close(ImageNetInput()(project_input), expected, rtol=0, atol=1e-5)
    assert not dict(ImageNetInput().state_dict())  # constants, never in checkpoints
