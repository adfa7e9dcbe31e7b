"""Import of the reference's checkpoints and of DeepLab initialisation files (docs/method.md, "Network").

The mapping between the reference's parameter names and the project's is one literal table of
key prefixes, used in both directions. A conversion is refused, with the offending keys named,
when a target key would stay unfilled, a source key would go unused (outside the documented
skips) or a shape differs.

Reference variants (their key tables: ``tests/reference/reference_*_state_dict.tsv``):

========== ===================================================================================
gta        CorDA, ASPP initial semantic classifier (GTA5 -> Cityscapes)
synthia    CorDA, 1x1 initial semantic classifier (SYNTHIA -> Cityscapes)
noatt      the reference's reduced no-attention network (outputs S and D only)
multitask  simple auxiliary depth (ASPP S and ASPP D on the backbone)
deeplab    plain DeepLabV2 with its ``layer5`` classifier (DACS / source-only checkpoints)
========== ===================================================================================
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from cordaseg.config import to_dict
from cordaseg.errors import CheckpointError
from cordaseg.models.checkpoint_file import FORMAT, FORMAT_VERSION
from cordaseg.models.corda import CordaNet, ModelConfig
from cordaseg.models.state_dicts import check_keys, strip_module_prefix
from cordaseg.runtime.distributed import unwrap

# (reference prefix, project prefix). Longest matching prefix wins.
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("conv1.", "backbone.conv1."),
    ("bn1.", "backbone.bn1."),
    ("layer1.", "backbone.layer1."),
    ("layer2.", "backbone.layer2."),
    ("layer3.", "backbone.layer3."),
    ("layer4.", "backbone.layer4."),
    ("initial_task_prediction_heads.layers.S.", "initial_branches.semantic."),
    ("initial_task_prediction_heads.layers.D.", "initial_branches.depth."),
    ("initial_task_prediction_heads.conv_out.S.conv2d_list.", "semantic_initial_head.branches."),
    ("initial_task_prediction_heads.conv_out.S.", "semantic_initial_head."),
    ("initial_task_prediction_heads.conv_out.D.", "depth_initial_head."),
    ("initial_task_prediction_heads.conv_out.D_src.", "depth_source_initial_head."),
    # self_attention[T][A] carries task A's features into task T.
    ("multi_modal_distillation.self_attention.S.D.attention.0.", "distillation.depth_to_semantic.gate."),
    ("multi_modal_distillation.self_attention.S.D.conv.", "distillation.depth_to_semantic.conv."),
    ("multi_modal_distillation.self_attention.D.S.attention.0.", "distillation.semantic_to_depth.gate."),
    ("multi_modal_distillation.self_attention.D.S.conv.", "distillation.semantic_to_depth.conv."),
    ("heads.S.conv2d_list.", "semantic_head.branches."),
    ("heads.D.conv2d_list.", "depth_head.branches."),
    ("heads.D_src.conv2d_list.", "depth_source_head.branches."),
)
# Plain DeepLabV2 files name their classifier ``layer5``; it maps to the semantic head.
DEEPLAB_CLASSIFIER = ("layer5.conv2d_list.", "semantic_head.branches.")

REFERENCE_VARIANTS = ("gta", "synthia", "noatt", "multitask", "deeplab")


def reference_model_config(variant: str, **overrides) -> ModelConfig:
    """The project's config of a reference variant (ResNet-101, two-branch ASPP)."""
    base = {
        "gta": ModelConfig(arch="corda", initial_semantic="aspp"),
        "synthia": ModelConfig(arch="corda", initial_semantic="conv"),
        "noatt": ModelConfig(arch="reference_noatt"),
        "multitask": ModelConfig(arch="multitask"),
        "deeplab": ModelConfig(arch="deeplab"),
    }
    if variant not in base:
        raise CheckpointError(f"unknown reference variant {variant!r}; choose one of {', '.join(REFERENCE_VARIANTS)}")
    return dataclasses.replace(base[variant], **overrides)


def _table(arch: str) -> tuple[tuple[str, str], ...]:
    return KEY_TABLE + ((DEEPLAB_CLASSIFIER,) if arch == "deeplab" else ())


def _rename(key: str, table, reverse: bool = False) -> str | None:
    best = None
    for ref_prefix, our_prefix in table:
        src, dst = (our_prefix, ref_prefix) if reverse else (ref_prefix, our_prefix)
        if key.startswith(src) and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    return None if best is None else best[1] + key[len(best[0]) :]


def detect_variant(state: Mapping[str, torch.Tensor]) -> str:
    """Name the reference variant from its keys; raise if the keys fit none unambiguously."""
    keys = set(state)
    has_distill = any(k.startswith("multi_modal_distillation.") for k in keys)
    has_initial = any(k.startswith("initial_task_prediction_heads.layers.") for k in keys)
    has_heads = "heads.S.conv2d_list.0.weight" in keys
    if has_distill and "initial_task_prediction_heads.conv_out.S.conv2d_list.0.weight" in keys:
        return "gta"
    if has_distill and "initial_task_prediction_heads.conv_out.S.weight" in keys:
        return "synthia"
    if has_initial and has_heads and not has_distill:
        return "noatt"
    if has_heads and "heads.D.conv2d_list.0.weight" in keys and not has_initial:
        return "multitask"
    if "layer5.conv2d_list.0.weight" in keys and not has_heads:
        return "deeplab"
    raise CheckpointError(
        "cannot tell which reference variant these keys belong to; pass --variant "
        f"({', '.join(REFERENCE_VARIANTS)})"
    )


def infer_shape_config(state: Mapping[str, torch.Tensor], variant: str) -> ModelConfig:
    """Backbone depth and width, head width and class count as read off the tensors."""
    layer3_blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    bottleneck = "layer1.0.conv3.weight" in state
    depth_by_blocks = {(23, True): 101, (6, True): 50, (6, False): 34, (2, False): 18}
    n_blocks = max(layer3_blocks) + 1 if layer3_blocks else 0
    if (n_blocks, bottleneck) not in depth_by_blocks:
        raise CheckpointError(f"unsupported backbone: layer3 has {n_blocks} blocks (bottleneck={bottleneck})")
    overrides = {
        "backbone_depth": depth_by_blocks[(n_blocks, bottleneck)],
        "backbone_width": int(state["conv1.weight"].shape[0]),
    }
    classifier = "layer5.conv2d_list.0.weight" if variant == "deeplab" else "heads.S.conv2d_list.0.weight"
    if classifier in state:
        overrides["num_classes"] = int(state[classifier].shape[0])
    proj = "initial_task_prediction_heads.layers.S.0.downsample.0.weight"
    if proj in state:
        overrides["head_width"] = int(state[proj].shape[0])
    return reference_model_config(variant, **overrides)


def reference_to_project(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], arch: str
) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to the project's keys, checked against ``target``.

    ``target`` is the project model's state dict (keys and shapes); every key must be filled and
    every source key used, with equal shapes, or a CheckpointError names the keys.
    """
    table = _table(arch)
    out: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in state.items():
        new = _rename(key, table)
        if new is None or new not in target:
            unused.append(key)
            continue
        out[new] = value
    check_keys(out, target, unused, what="reference checkpoint")
    return out


def project_to_reference(state: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The project's state dict under the reference's key names (the table read backwards)."""
    table = _table(arch)
    if arch == "deeplab":  # the semantic head is ``layer5`` there, not ``heads.S``
        table = tuple(t for t in table if t[0] != "heads.S.conv2d_list.")
    out = {}
    for key, value in state.items():
        ref = _rename(key, table, reverse=True)
        if ref is None:
            raise CheckpointError(f"project key {key!r} has no reference name")
        out[ref] = value
    return out


def load_backbone_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load the state dict of a DeepLab initialisation file (COCO or ImageNet) into the backbone only.

    Accepts keys with the ImageNet file's ``Scale.`` prefix. Skipped: ``layer5.*`` (the old
    classifier) and, where the file predates them, the BN ``num_batches_tracked`` counters.
    Returns ``{"loaded": [...], "skipped": [...]}``; raises if a backbone tensor is missing or a
    shape differs. :func:`cordaseg.models.checkpoint.load_init_weights` reads the file.
    """
    net = unwrap(model)
    state = strip_module_prefix(state)
    if state and all(k.startswith("Scale.") for k in state):
        state = {k[len("Scale.") :]: v for k, v in state.items()}
    target = net.backbone.state_dict()
    out, unused, skipped = {}, [], []
    for key, value in state.items():
        if key.startswith("layer5."):
            skipped.append(key)
            continue
        new = _rename(key, KEY_TABLE)
        if new is None or not new.startswith("backbone.") or new[len("backbone.") :] not in target:
            unused.append(key)
            continue
        out[new[len("backbone.") :]] = value
    loaded = sorted(out)
    for key in target:
        if key not in out and key.endswith("num_batches_tracked"):
            out[key] = target[key]
    check_keys(out, target, unused, what="DeepLab initialisation file")
    net.backbone.load_state_dict(out, strict=True)
    return {"loaded": loaded, "skipped": skipped}


StateMap = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], str], dict[str, torch.Tensor]]
"""(another codebase's state dict, the project model's state dict, "student" or "teacher") ->
the project's state dict."""


def converted_payload(cfg: ModelConfig, to_project: StateMap, student: Mapping[str, torch.Tensor],
                      teacher: Mapping[str, torch.Tensor] | None, iteration: int | None,
                      source: dict[str, Any]) -> dict[str, Any]:
    """The project checkpoint of a converted file: the student as ``model``, the EMA teacher as
    ``teacher`` where the file has one, the file's iteration and where it came from (``source``);
    each state dict is mapped by ``to_project`` against the keys and shapes of a ``cfg`` model."""
    with torch.device("meta"):
        target = CordaNet(cfg).state_dict()
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": to_dict(cfg),
                               "model": to_project(student, target, "student"), "source": source}
    if teacher is not None:
        payload["teacher"] = to_project(teacher, target, "teacher")
    if iteration is not None:
        payload["iteration"] = iteration
    return payload
