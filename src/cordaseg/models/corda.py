"""The CorDA multi-task network (spec section 2) and its variants, as configuration of one model.

Architecture (``arch="corda"``), on the backbone output ``x``:

    F_S, F_D = initial_branches(x)                  two bottlenecks each, 256 ch
    semantic_initial = ASPP(x) (GTA) | conv1x1(F_S) (SYNTHIA)
    depth_initial, depth_source_initial = conv1x1(F_D), conv1x1(F_D)
    G_S = F_S + SA(F_D);  G_D = F_D + SA(F_S)       spatial-attention distillation
    semantic = ASPP(G_S); depth = ASPP(G_D); depth_source = ASPP(G_D)

Variants:
- ``attention=False``: the paper's no-attention ablation (G_T = F_T), everything else kept;
- ``arch="reference_noatt"``: the reference's reduced no-attention file (outputs S and D only);
- ``arch="multitask"``: simple auxiliary depth, ASPP(x) -> S and ASPP(x) -> D;
- ``arch="deeplab"``: plain DeepLabV2 (ASPP(x) -> S), the DACS and source-only model.

The ASPP classifier sums only its first two branches by default: the reference's forward returns
inside its loop, so the published models never used dilations 18 and 24. ``aspp_branches=4``
gives the full DeepLabV2 sum; the weights of all four branches always exist, so checkpoints load
either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cordaseg.models.backbone import Bottleneck, DeepLabResNet, _init_conv_bn
from cordaseg.runtime.distributed import unwrap


@dataclass
class ModelConfig:
    """Which network to build; every field is saved inside checkpoints."""

    arch: Literal["corda", "multitask", "deeplab", "reference_noatt"] = "corda"
    """corda (multi-task with distillation), multitask (simple auxiliary depth), deeplab (no depth),
    reference_noatt (the reference's reduced no-attention layout, for its checkpoints)."""
    initial_semantic: Literal["aspp", "conv"] = "aspp"
    """Initial semantic classifier: ASPP on the backbone (GTA recipe) or 1x1 conv on F_S (SYNTHIA)."""
    attention: bool = True
    """Spatial-attention cross-task distillation; False is the paper's no-attention ablation."""
    backbone_depth: Literal[18, 34, 50, 101] = 101
    """ResNet depth: 18/34 basic blocks (fast CPU work), 50/101 bottlenecks (the paper: 101)."""
    backbone_width: int = 64
    """Channels of the stem; every backbone stage scales with it (64 in the paper)."""
    head_width: int = 256
    """Channels of the task branches and distillation (256 in the paper)."""
    num_classes: int = 19
    """Semantic classes (19 for both GTA5 and SYNTHIA models)."""
    aspp_branches: Literal[2, 4] = 2
    """ASPP branches summed: 2 reproduces the reference (default), 4 is the full DeepLabV2 sum."""
    aspp_dilations: tuple[int, int, int, int] = (6, 12, 18, 24)
    """Dilation (= padding) of the four ASPP branches."""
    freeze_bn_stats: bool = False
    """Also freeze the backbone BN running statistics (the reference updates them)."""
    head_bias_init: Literal["uniform", "zero"] = "uniform"
    """Initial bias of the head convolutions that have one (ASPP branches, 1x1 classifiers):
    'uniform' keeps PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as the reference does;
    'zero' zeroes it. Weights are N(0, 0.01) either way. Only affects freshly built models."""

    def __post_init__(self) -> None:
        if self.head_width % 4:
            raise ValueError(f"head_width must be a multiple of 4, got {self.head_width}")
        if self.arch != "corda" and self.initial_semantic != "aspp":
            raise ValueError(f"initial_semantic={self.initial_semantic!r} only applies to arch 'corda'")
        if self.backbone_width < 1 or self.num_classes < 1:
            raise ValueError("backbone_width and num_classes must be positive")

    @property
    def has_depth(self) -> bool:
        return self.arch != "deeplab"

    @property
    def has_depth_discrepancy(self) -> bool:
        """Both depth decoders exist, so the depth-based adaptation difficulty can be computed."""
        return self.arch == "corda"


OUTPUT_NAMES = ("semantic", "semantic_initial", "depth", "depth_initial", "depth_source", "depth_source_initial")


@dataclass
class CordaOutput:
    """Predictions at 1/8 resolution: logits (B, C, h, w) and depth maps (B, 1, h, w).

    ``depth`` is the "target" decoder D, ``depth_source`` the "source" decoder D_src; a field is
    None where the variant has no such output.
    """

    semantic: torch.Tensor
    semantic_initial: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    depth_initial: torch.Tensor | None = None
    depth_source: torch.Tensor | None = None
    depth_source_initial: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> CordaOutput:
        """Apply ``fn`` to every present output (e.g. upsampling to the crop size)."""
        return CordaOutput(**{k: (None if v is None else fn(v)) for k, v in self.items()})

    def items(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        for f in dataclasses.fields(self):
            yield f.name, getattr(self, f.name)


class ASPPClassifier(nn.Module):
    """DeepLabV2 ASPP: four dilated 3x3 convs with bias whose outputs are summed.

    Only the first ``summed`` branches contribute (2 = the reference's behaviour, see module doc).
    """

    def __init__(self, in_ch: int, out_ch: int, dilations=(6, 12, 18, 24), summed: int = 2):
        super().__init__()
        self.summed = summed
        self.branches = nn.ModuleList(
            nn.Conv2d(in_ch, out_ch, 3, padding=d, dilation=d, bias=True) for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1 : self.summed]:
            out = out + branch(x)
        return out


class SpatialAttention(nn.Module):
    """PAD-Net-style message from one task to another: conv3x3(F) * sigmoid(gate3x3(F))."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.gate = nn.Conv2d(ch, ch, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.sigmoid(self.gate(x))


def _task_branch(in_ch: int, width: int) -> nn.Sequential:
    """Initial task branch: two bottlenecks (in_ch -> width with projection, width -> width)."""
    planes = width // Bottleneck.expansion
    return nn.Sequential(Bottleneck(in_ch, planes, project=True), Bottleneck(width, planes))


class CordaNet(nn.Module):
    """Backbone plus task heads; ``forward(x)`` returns a :class:`CordaOutput` and nothing else."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = DeepLabResNet(cfg.backbone_depth, cfg.backbone_width, cfg.freeze_bn_stats)
        in_ch, width, n = self.backbone.out_channels, cfg.head_width, cfg.num_classes

        def aspp(c_in: int, c_out: int) -> ASPPClassifier:
            return ASPPClassifier(c_in, c_out, cfg.aspp_dilations, cfg.aspp_branches)

        if cfg.arch in ("corda", "reference_noatt"):
            self.initial_branches = nn.ModuleDict(
                {"semantic": _task_branch(in_ch, width), "depth": _task_branch(in_ch, width)}
            )
        if cfg.arch == "corda":
            self.semantic_initial_head = (
                aspp(in_ch, n) if cfg.initial_semantic == "aspp" else nn.Conv2d(width, n, 1)
            )
            self.depth_initial_head = nn.Conv2d(width, 1, 1)
            self.depth_source_initial_head = nn.Conv2d(width, 1, 1)
            if cfg.attention:
                self.distillation = nn.ModuleDict(
                    {"depth_to_semantic": SpatialAttention(width), "semantic_to_depth": SpatialAttention(width)}
                )
            self.depth_source_head = aspp(width, 1)
        head_in = in_ch if cfg.arch in ("multitask", "deeplab") else width
        self.semantic_head = aspp(head_in, n)
        if cfg.has_depth:
            self.depth_head = aspp(head_in, 1)
        _init_conv_bn(nn.ModuleList(m for name, m in self.named_children() if name != "backbone"),
                      zero_conv_bias=cfg.head_bias_init == "zero")

    def forward(self, x: torch.Tensor) -> CordaOutput:
        cfg = self.cfg
        feats = self.backbone(x)  # (B, 2048, h, w) for ResNet-101
        if cfg.arch in ("deeplab", "multitask"):
            return CordaOutput(
                semantic=self.semantic_head(feats),
                depth=self.depth_head(feats) if cfg.has_depth else None,
            )
        f_sem = self.initial_branches["semantic"](feats)  # (B, 256, h, w)
        f_depth = self.initial_branches["depth"](feats)
        if cfg.arch == "reference_noatt":
            return CordaOutput(semantic=self.semantic_head(f_sem), depth=self.depth_head(f_depth))
        initial_in = feats if cfg.initial_semantic == "aspp" else f_sem
        semantic_initial = self.semantic_initial_head(initial_in)
        if cfg.attention:
            g_sem = f_sem + self.distillation["depth_to_semantic"](f_depth)
            g_depth = f_depth + self.distillation["semantic_to_depth"](f_sem)
        else:
            g_sem, g_depth = f_sem, f_depth
        return CordaOutput(
            semantic=self.semantic_head(g_sem),
            semantic_initial=semantic_initial,
            depth=self.depth_head(g_depth),
            depth_initial=self.depth_initial_head(f_depth),
            depth_source=self.depth_source_head(g_depth),
            depth_source_initial=self.depth_source_initial_head(f_depth),
        )


def build_model(cfg: ModelConfig | None = None, **overrides) -> CordaNet:
    """Build a freshly initialised network: ``build_model(ModelConfig(...))`` or ``build_model(arch=...)``."""
    cfg = dataclasses.replace(cfg or ModelConfig(), **overrides)
    return CordaNet(cfg)


REFERENCE_BACKBONE_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
"""The top-level backbone blocks the reference's optimiser walks to build its 1x group."""


def reference_multiplicity(backbone: nn.Module) -> dict[int, int]:
    """How often the reference's 1x parameter list names each trainable backbone tensor, by ``id``.

    The reference walks the blocks of :data:`REFERENCE_BACKBONE_BLOCKS` and, for every module
    ``m`` in ``block.modules()`` (the block itself included), lists every trainable tensor of
    ``m.parameters()`` (recursive). A tensor is therefore listed once per module on the path from
    its block down to the module that owns it: the stem convolution once, a residual block's
    convolution 3 times (layer, block, conv), a projection convolution 4 times (layer, block,
    ``downsample``, its conv). Computed from the module tree, not from a table, so every backbone
    depth and width gets its own counts. See docs/reference-behaviour.md.
    """
    counts: dict[int, int] = {}
    for name in REFERENCE_BACKBONE_BLOCKS:
        for module in getattr(backbone, name).modules():
            for p in module.parameters():
                if p.requires_grad:
                    counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 10.0,
                 multiplicity: Literal["reference", "once"] = "once") -> list[dict]:
    """Optimiser groups: trainable backbone parameters at ``lr``, every head at ``head_lr_mult * lr``.

    Accepts a DDP-wrapped model. Each group records its learning-rate multiplier under ``lr_mult``
    (a schedule sets ``group["lr"] = lr_i * group["lr_mult"]``) and under ``multiplicity`` how many
    times per step the optimiser applies its update (1 for a standard optimiser). With
    ``multiplicity="reference"`` the backbone is split into one group per count of
    :func:`reference_multiplicity` (named ``backbone_x1``, ``backbone_x3``, ...), for
    :class:`cordaseg.engine.optim.MultiplicitySGD`; ``"once"`` gives one backbone group.
    """
    net = unwrap(model)
    backbone_ids = {id(p) for p in net.backbone.parameters()}
    heads = [p for p in net.parameters() if p.requires_grad and id(p) not in backbone_ids]
    head_group = {"params": heads, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult, "name": "heads",
                  "multiplicity": 1}
    trainable = [p for p in net.backbone.parameters() if p.requires_grad]
    if multiplicity == "once":
        return [{"params": trainable, "lr": lr, "lr_mult": 1.0, "name": "backbone", "multiplicity": 1}, head_group]
    if multiplicity != "reference":
        raise ValueError(f"multiplicity must be 'reference' or 'once', got {multiplicity!r}")
    counts = reference_multiplicity(net.backbone)
    by_count: dict[int, list[nn.Parameter]] = {}
    for p in trainable:  # a trainable tensor outside the walked blocks would be listed 0 times
        by_count.setdefault(counts.get(id(p), 0), []).append(p)
    groups = [
        {"params": params, "lr": lr, "lr_mult": 1.0, "name": f"backbone_x{k}", "multiplicity": k}
        for k, params in sorted(by_count.items())
    ]
    return groups + [head_group]
