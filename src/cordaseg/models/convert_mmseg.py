"""Import of DAFormer and MIC checkpoints (mmsegmentation state dicts) as plain DAFormer models.

DAFormer (Hoyer et al., CVPR 2022) and MIC (Hoyer et al., CVPR 2023) release mmsegmentation
checkpoints: ``{"meta": ..., "state_dict": ..., "optimizer": ...}``. A checkpoint of their
domain-adaptation runs holds the student under ``model.``, the EMA teacher under ``ema_model.``
and, with the feature distance, the frozen ImageNet model under ``imnet_model.`` (skipped: it is
the backbone's initialisation, not part of the trained network); a plain mmseg checkpoint holds
one network without prefix. The network is DAFormer's: the MiT encoder of
``mix_transformer.py`` (``backbone.patch_embed1.*``, ``backbone.block1.0.attn.q.*``,
``backbone.norm1.*``) and ``DAFormerHead`` (``decode_head.embed_layers.*``,
``decode_head.fuse_layer.*``, ``decode_head.conv_seg.*``). It becomes ``ModelConfig(arch="deeplab",
decoder="daformer", backbone="mit_bN")``.

The mapping is one literal table of key templates per module, expanded over the stages, blocks,
decoder levels and fusion branches read off the checkpoint. Two rows transform a tensor: MiT's
joint key-value projection ``attn.kv`` is split in halves (keys first, then values, as its
attention reshapes it), and the decoder's linear embeddings become 1x1 convolutions. A
conversion is refused, naming keys, when a model tensor stays unfilled, a source tensor goes
unused or a shape differs. Not supported, and refused by name: HRDA's multi-resolution head
(``decode_head.scale_attention``, used by most MIC models) and other encoders or heads.

The tables themselves are in :mod:`cordaseg.models.mmseg_keys`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from cordaseg.errors import CheckpointError
from cordaseg.models.convert import converted_payload
from cordaseg.models.corda import ModelConfig
from cordaseg.models.mmseg_keys import (
    Row,
    apply_rows,
    decoder_rows,
    encoder_layout,
    mit_rows,
    reverse_rows,
    stage_depths,
)
from cordaseg.models.state_dicts import strip_module_prefix
from cordaseg.models.transformer_backbones import MIT_VARIANTS

UDA_PREFIXES = {"model.": "student", "ema_model.": "teacher", "imnet_model.": "skipped"}
"""Top-level modules of DAFormer's and MIC's domain-adaptation wrapper."""


def model_rows(cfg: ModelConfig, target_keys) -> list[Row]:
    """Every row of a plain DAFormer model of ``cfg``: MiT under ``backbone.``, then the decoder."""
    spec = MIT_VARIANTS[cfg.backbone]
    depths = tuple(cfg.backbone_blocks) if cfg.backbone_blocks is not None else spec.depths
    layout = encoder_layout(target_keys)
    return mit_rows(depths, spec.sr_ratios, layout, "backbone.", "backbone.encoder.") + decoder_rows()


def project_to_mmseg(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A plain DAFormer model's state dict under DAFormer's mmseg names."""
    return reverse_rows(state, model_rows(cfg, state.keys()))


def mmseg_to_project(state: Mapping[str, torch.Tensor], cfg: ModelConfig,
                     target: Mapping[str, torch.Tensor], what: str = "DAFormer checkpoint") -> dict[str, torch.Tensor]:
    """DAFormer mmseg names -> the project's, checked against ``target`` (keys and shapes)."""
    return apply_rows(state, model_rows(cfg, target.keys()), target, what)


def infer_daformer_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The plain DAFormer config of an mmseg state dict: MiT variant (or a scaled one), classes,
    decoder width. MiT's attention heads (1, 2, 5, 8) are the same in every variant and leave no
    trace in tensor shapes."""
    try:
        hidden = tuple(int(state[f"backbone.patch_embed{s}.proj.weight"].shape[0]) for s in range(1, 5))
        num_classes = int(state["decode_head.conv_seg.weight"].shape[0])
        width = int(state["decode_head.embed_layers.0.proj.weight"].shape[0])
    except KeyError as err:
        raise CheckpointError(f"not a DAFormer checkpoint: no {err.args[0]} tensor") from None
    depths = stage_depths(state, prefix="backbone.")
    published = [n for n, spec in MIT_VARIANTS.items() if spec.hidden_sizes == hidden and spec.depths == depths]
    if published:
        return ModelConfig(arch="deeplab", decoder="daformer", backbone=published[0], num_classes=num_classes,
                           decoder_width=width)
    # A scaled MiT (a tiny test model): B1..B5 widths times backbone_width / 64.
    base = MIT_VARIANTS["mit_b1"].hidden_sizes  # (64, 128, 320, 512)
    if any(h * base[0] != b * hidden[0] for h, b in zip(hidden, base)):
        raise CheckpointError(f"MiT stage widths {hidden} are not a MiT-B0..B5 layout")
    name = next((n for n, spec in MIT_VARIANTS.items() if spec.depths == depths and n != "mit_b0"), "mit_b1")
    return ModelConfig(arch="deeplab", decoder="daformer", backbone=name, backbone_width=hidden[0],
                       backbone_blocks=None if MIT_VARIANTS[name].depths == depths else depths,
                       num_classes=num_classes, decoder_width=width)


def is_mmseg_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a loaded file) looks like a DAFormer / MIC / mmseg checkpoint."""
    state = obj.get("state_dict") if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    if not isinstance(state, dict):
        return False
    return any(isinstance(k, str) and re.match(r"^(module\.)?((ema_|imnet_)?model\.)?(backbone|decode_head)\.", k)
               for k in state)


def split_mmseg_checkpoint(obj: Any, path: Any = "<memory>") -> tuple[dict, dict | None, int | None]:
    """(student state, teacher state or None, iteration or None) of an mmseg checkpoint."""
    state = obj["state_dict"] if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    state = strip_module_prefix(state)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    iteration = meta.get("iter") if isinstance(meta, dict) and isinstance(meta.get("iter"), int) else None
    if not any(k.startswith(tuple(UDA_PREFIXES)) for k in state):
        return state, None, iteration
    parts: dict[str, dict] = {"student": {}, "teacher": {}, "skipped": {}}
    for key, value in state.items():
        prefix = next((p for p in UDA_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"{path}: key {key!r} belongs to none of the domain-adaptation wrapper's "
                                  f"models ({', '.join(UDA_PREFIXES)})")
        parts[UDA_PREFIXES[prefix]][key[len(prefix):]] = value
    return parts["student"], parts["teacher"] or None, iteration


def _refuse_unsupported(state: Mapping[str, torch.Tensor], path: Any) -> None:
    if any(k.startswith("decode_head.scale_attention.") or k.startswith("decode_head.head.") for k in state):
        raise CheckpointError(f"{path}: an HRDA checkpoint (multi-resolution head, decode_head.scale_attention); "
                              "only DAFormer's single-resolution head is supported")
    if any(k.startswith("backbone.layers.") for k in state):
        raise CheckpointError(f"{path}: mmsegmentation's own MiT layout (backbone.layers.*), not DAFormer's "
                              "mix_transformer.py (backbone.patch_embed1.*, backbone.block1.*)")
    if not any(k.startswith("backbone.patch_embed1.") for k in state):
        raise CheckpointError(f"{path}: the backbone is not DAFormer's MiT (no backbone.patch_embed1.* tensors)")


def convert_mmseg_checkpoint(obj: Any, path: Any = "<memory>") -> dict[str, Any]:
    """A DAFormer / MIC checkpoint (already loaded) -> the project's checkpoint dict (plain DAFormer,
    student as ``model``, EMA teacher as ``teacher`` where the file has one)."""
    student, teacher, iteration = split_mmseg_checkpoint(obj, path)
    _refuse_unsupported(student, path)
    cfg = infer_daformer_config(student)
    names = {"student": "DAFormer student", "teacher": "DAFormer EMA teacher"}
    return converted_payload(
        cfg, lambda state, target, role: mmseg_to_project(state, cfg, target, what=f"{path}: {names[role]}"),
        student, teacher, iteration, {"kind": "mmseg", "variant": "daformer", "file": str(path)})
