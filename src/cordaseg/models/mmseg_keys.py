"""Key tables of DAFormer's mmsegmentation files: SegFormer's original MiT encoder names
(``mix_transformer.py``) and DAFormer's decoder head, each against the project's, expanded over
stages, blocks, levels and fusion branches and applied with every key and shape checked.

:mod:`cordaseg.models.convert_mmseg` converts whole DAFormer / MIC checkpoints with them;
:mod:`cordaseg.models.transformer_backbones` loads SegFormer's original ImageNet MiT files with
:func:`original_mit_to_encoder`. The target names inside ``backbone.encoder`` are those of the
installed ``transformers``: its Segformer module layout changed in 5.0 (``stages.N.blocks``) from
4.x (``encoder.block.N``), so the MiT table has one column per layout and the layout is read off
the built model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch

from cordaseg.errors import CheckpointError
from cordaseg.models.daformer import FUSION_DILATIONS
from cordaseg.models.state_dicts import check_keys, strip_module_prefix

WB = ("weight", "bias")
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# MiT rows: (scope, parameters, mmseg template, {layout: target template}). Scopes: "stage" once per
# stage s = 1..4 (t = s - 1), "block" once per block b, "reduced" per block of the stages whose
# sequence-reduction ratio exceeds 1. A pair of targets splits the source in halves along dim 0.
_B5 = "stages.{t}.blocks.{b}."
_B4 = "encoder.block.{t}.{b}."
MIT_TABLE: tuple[tuple[str, tuple[str, ...], str, dict[str, str | tuple[str, str]]], ...] = (
    ("stage", WB, "patch_embed{s}.proj.{p}", {
        "transformers5": "stages.{t}.patch_embeddings.proj.{p}",
        "transformers4": "encoder.patch_embeddings.{t}.proj.{p}"}),
    ("stage", WB, "patch_embed{s}.norm.{p}", {
        "transformers5": "stages.{t}.patch_embeddings.layer_norm.{p}",
        "transformers4": "encoder.patch_embeddings.{t}.layer_norm.{p}"}),
    ("block", WB, "block{s}.{b}.norm1.{p}", {
        "transformers5": _B5 + "layernorm_before.{p}",
        "transformers4": _B4 + "layer_norm_1.{p}"}),
    ("block", WB, "block{s}.{b}.attn.q.{p}", {
        "transformers5": _B5 + "attention.q_proj.{p}",
        "transformers4": _B4 + "attention.self.query.{p}"}),
    ("block", WB, "block{s}.{b}.attn.kv.{p}", {
        "transformers5": (_B5 + "attention.k_proj.{p}", _B5 + "attention.v_proj.{p}"),
        "transformers4": (_B4 + "attention.self.key.{p}", _B4 + "attention.self.value.{p}")}),
    ("reduced", WB, "block{s}.{b}.attn.sr.{p}", {
        "transformers5": _B5 + "attention.sequence_reduction.sequence_reduction.{p}",
        "transformers4": _B4 + "attention.self.sr.{p}"}),
    ("reduced", WB, "block{s}.{b}.attn.norm.{p}", {
        "transformers5": _B5 + "attention.sequence_reduction.layer_norm.{p}",
        "transformers4": _B4 + "attention.self.layer_norm.{p}"}),
    ("block", WB, "block{s}.{b}.attn.proj.{p}", {
        "transformers5": _B5 + "attention.o_proj.{p}",
        "transformers4": _B4 + "attention.output.dense.{p}"}),
    ("block", WB, "block{s}.{b}.norm2.{p}", {
        "transformers5": _B5 + "layernorm_after.{p}",
        "transformers4": _B4 + "layer_norm_2.{p}"}),
    ("block", WB, "block{s}.{b}.mlp.fc1.{p}", {
        "transformers5": _B5 + "mlp.fc1.{p}",
        "transformers4": _B4 + "mlp.dense1.{p}"}),
    ("block", WB, "block{s}.{b}.mlp.dwconv.dwconv.{p}", {
        "transformers5": _B5 + "mlp.dwconv.dwconv.{p}",
        "transformers4": _B4 + "mlp.dwconv.dwconv.{p}"}),
    ("block", WB, "block{s}.{b}.mlp.fc2.{p}", {
        "transformers5": _B5 + "mlp.fc2.{p}",
        "transformers4": _B4 + "mlp.dense2.{p}"}),
    ("stage", WB, "norm{s}.{p}", {
        "transformers5": "stages.{t}.layer_norm.{p}",
        "transformers4": "encoder.layer_norm.{t}.{p}"}),
)
"""DAFormer's ``mix_transformer.py`` names (the original SegFormer code) -> ``SegformerModel``'s."""

# Decoder rows: (scope, parameters, mmseg template, project template). Scopes: "level" per
# backbone level l = 0..3, "separable" per dilated fusion branch i = 1..3, "once".
DECODER_TABLE: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("level", WB, "decode_head.embed_layers.{l}.proj.{p}", "decoder.embed.{l}.{p}"),
    ("once", ("weight",), "decode_head.fuse_layer.aspp_modules.0.conv.{p}", "decoder.fusion.branches.0.conv.{p}"),
    ("once", BN, "decode_head.fuse_layer.aspp_modules.0.bn.{p}", "decoder.fusion.branches.0.bn.{p}"),
    ("separable", ("weight",), "decode_head.fuse_layer.aspp_modules.{i}.depthwise_conv.conv.{p}",
     "decoder.fusion.branches.{i}.depthwise.conv.{p}"),
    ("separable", BN, "decode_head.fuse_layer.aspp_modules.{i}.depthwise_conv.bn.{p}",
     "decoder.fusion.branches.{i}.depthwise.bn.{p}"),
    ("separable", ("weight",), "decode_head.fuse_layer.aspp_modules.{i}.pointwise_conv.conv.{p}",
     "decoder.fusion.branches.{i}.pointwise.conv.{p}"),
    ("separable", BN, "decode_head.fuse_layer.aspp_modules.{i}.pointwise_conv.bn.{p}",
     "decoder.fusion.branches.{i}.pointwise.bn.{p}"),
    ("once", ("weight",), "decode_head.fuse_layer.bottleneck.conv.{p}", "decoder.fusion.bottleneck.conv.{p}"),
    ("once", BN, "decode_head.fuse_layer.bottleneck.bn.{p}", "decoder.fusion.bottleneck.bn.{p}"),
    ("once", WB, "decode_head.conv_seg.{p}", "semantic_head.conv.{p}"),
)
"""DAFormer's ``DAFormerHead`` (sep-ASPP fusion, dilations 1, 6, 12, 18) -> :class:`DAFormerDecoder`."""

# ----------------------------------------------------------------------------------------------
# Expanding the tables


@dataclasses.dataclass(frozen=True)
class Row:
    """One source tensor and the target tensor(s) it fills; ``split``: halves along dim 0."""

    source: str
    targets: tuple[str, ...]
    as_1x1: bool = False  # a linear layer's (out, in) weight that becomes a (out, in, 1, 1) conv
    optional: bool = False  # BN step counters, absent from files written before PyTorch 0.4.1


def mit_rows(depths: tuple[int, ...], sr_ratios: tuple[int, ...], layout: str,
             source_prefix: str = "", target_prefix: str = "") -> list[Row]:
    """:data:`MIT_TABLE` expanded for the given stage depths and reduction ratios."""
    rows = []
    for scope, params, src, targets in MIT_TABLE:
        dst = targets[layout]
        dst = dst if isinstance(dst, tuple) else (dst,)
        for s, depth in enumerate(depths, start=1):
            if scope == "reduced" and sr_ratios[s - 1] == 1:
                continue
            for b in range(depth if scope != "stage" else 1):
                for p in params:
                    fill = {"s": s, "t": s - 1, "b": b, "p": p}
                    rows.append(Row(source_prefix + src.format(**fill),
                                    tuple(target_prefix + d.format(**fill) for d in dst)))
    return rows


def decoder_rows(levels: int = 4, dilations: tuple[int, ...] = FUSION_DILATIONS) -> list[Row]:
    """:data:`DECODER_TABLE` expanded over the levels and the separable fusion branches."""
    rows = []
    for scope, params, src, dst in DECODER_TABLE:
        if scope == "level":
            indices = [{"l": lvl} for lvl in range(levels)]
        elif scope == "separable":
            indices = [{"i": i} for i, d in enumerate(dilations) if d != 1]
        else:
            indices = [{}]
        for index in indices:
            for p in params:
                rows.append(Row(src.format(p=p, **index), (dst.format(p=p, **index),),
                                as_1x1=scope == "level" and p == "weight",
                                optional=p == "num_batches_tracked"))
    return rows


def encoder_layout(target_keys) -> str:
    """Which ``transformers`` module layout the built MiT encoder has."""
    keys = list(target_keys)
    if any(".stages.0.blocks.0." in "." + k or k.startswith("stages.0.blocks.0.") for k in keys):
        return "transformers5"
    if any(".encoder.block.0.0." in "." + k for k in keys):
        return "transformers4"
    raise CheckpointError("the installed transformers lays out SegformerModel in a way this table does not "
                          "know (neither stages.N.blocks nor encoder.block.N)")


# ----------------------------------------------------------------------------------------------
# Converting


def apply_rows(state: Mapping[str, torch.Tensor], rows: list[Row], target: Mapping[str, torch.Tensor],
               what: str, skip=lambda key: False) -> dict[str, torch.Tensor]:
    """Source state -> target state through ``rows``; refused unless it fills ``target`` exactly.

    ``skip(key)`` names source keys that are left out on purpose (documented per caller).
    """
    out: dict[str, torch.Tensor] = {}
    used = set()
    for row in rows:
        if row.source not in state:
            if row.optional:
                out.update({t: torch.zeros((), dtype=torch.long) for t in row.targets})
            continue  # reported as unfilled target keys by check_keys
        value = state[row.source]
        used.add(row.source)
        if len(row.targets) == 2:
            if value.shape[0] % 2:
                raise CheckpointError(f"{what}: {row.source} has {value.shape[0]} rows, not an even key/value pair")
            half = value.shape[0] // 2
            out[row.targets[0]], out[row.targets[1]] = value[:half], value[half:]
        else:
            out[row.targets[0]] = value[:, :, None, None] if row.as_1x1 and value.dim() == 2 else value
    unused = [k for k in state if k not in used and not skip(k)]
    check_keys(out, target, unused, what=what)
    return out


def reverse_rows(state: Mapping[str, torch.Tensor], rows: list[Row]) -> dict[str, torch.Tensor]:
    """The table read backwards: a project state -> mmseg names (halves joined, 1x1 convs flattened)."""
    out = {}
    for row in rows:
        if any(t not in state for t in row.targets):
            raise CheckpointError(f"project key {row.targets[0]!r} missing: the state does not fit the table")
        if len(row.targets) == 2:
            out[row.source] = torch.cat([state[t] for t in row.targets], dim=0)
        else:
            value = state[row.targets[0]]
            out[row.source] = value[:, :, 0, 0] if row.as_1x1 else value
    extra = set(state) - {t for row in rows for t in row.targets}
    if extra:
        raise CheckpointError(f"project key(s) without an mmseg name: {', '.join(sorted(extra)[:5])}")
    return out


def original_mit_to_encoder(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                            path: Any = "<memory>") -> dict[str, torch.Tensor]:
    """SegFormer's original MiT weights (``patch_embed1.*``, ``block1.0.*``; a ``backbone.`` prefix
    allowed) -> a ``SegformerModel`` state dict. The ImageNet classifier ``head.*`` is skipped."""
    state = strip_module_prefix(state)
    if all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items()}
    depths = stage_depths(state, prefix="")
    sr_ratios = tuple(int(state[f"block{s}.0.attn.sr.weight"].shape[-1]) if f"block{s}.0.attn.sr.weight" in state
                      else 1 for s in range(1, 5))
    rows = mit_rows(depths, sr_ratios, encoder_layout(target.keys()))
    return apply_rows(state, rows, target, f"{path}: MiT weights", skip=lambda k: k.startswith("head."))


def stage_depths(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, int, int, int]:
    """Blocks of each of the four MiT stages, counted from the ``{prefix}blockN.M.`` keys."""
    depths = []
    for s in range(1, 5):
        pattern = re.compile(rf"^{re.escape(prefix)}block{s}\.(\d+)\.")
        blocks = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        if not blocks:
            raise CheckpointError(f"no {prefix}block{s}.* tensors: not DAFormer's MiT encoder")
        depths.append(max(blocks) + 1)
    return tuple(depths)
