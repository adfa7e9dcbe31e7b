"""The CorDA multi-task network (Wang et al., "Domain Adaptive Semantic Segmentation with
Self-Supervised Depth Estimation", ICCV 2021) and its variants, as configuration of one model.

Architecture (``arch="corda"``, ``decoder="deeplab"``), on the backbone output ``x``:

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

**Modern backbones and the DAFormer decoder.** ``backbone`` picks the DeepLabV2 ResNet (default),
SegFormer's MiT-B0..B5 or a DINOv2 ViT (:mod:`cordaseg.models.transformer_backbones`).
``decoder="daformer"`` puts DAFormer's context-aware fusion (:mod:`cordaseg.models.daformer`) on
the backbone's four levels; its fused features ``Z`` (``decoder_width`` channels, stride 4) take
the place of ``x`` above, and CorDA's modules sit on top unchanged in structure:

    Z = DAFormerDecoder(x_1..x_4)
    F_S, F_D = initial_branches(Z)
    semantic_initial = cls(Z) (initial_semantic="aspp": the plain DAFormer head) | cls(F_S) ("conv")
    G_S, G_D as above; semantic = cls(G_S); depth, depth_source = conv1x1(G_D)
    depth_initial, depth_source_initial = conv1x1(F_D)

with ``cls`` = channel dropout (``decoder_dropout``) and a 1x1 conv, DAFormer's classifier.
``arch="deeplab"`` with ``decoder="daformer"`` is plain DAFormer (``semantic = cls(Z)``, the
DAFormer / MIC baseline), ``arch="multitask"`` adds a second DAFormer decoder for depth.

Output strides: DeepLab decoder 8 on the ResNet (ceil, so a 512 crop gives 65), 32 on the
transformers (their last level); DAFormer decoder 4 (the size of the first level).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cordaseg.models.backbone import Bottleneck, DeepLabResNet, _init_conv_bn
from cordaseg.models.daformer import DAFormerDecoder, PixelClassifier
from cordaseg.models.output import CordaOutput
from cordaseg.models.transformer_backbones import build_transformer_backbone, load_pretrained
from cordaseg.runtime.distributed import unwrap

BackboneName = Literal["resnet", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5",
                       "dinov2_s", "dinov2_b", "dinov2_l"]


@dataclass
class ModelConfig:
    """Which network to build; every field is saved inside checkpoints."""

    arch: Literal["corda", "multitask", "deeplab", "reference_noatt"] = "corda"
    """corda (multi-task with distillation), multitask (simple auxiliary depth), deeplab (no depth),
    reference_noatt (the reference's reduced no-attention layout, for its checkpoints)."""
    initial_semantic: Literal["aspp", "conv"] = "aspp"
    """Initial semantic classifier: ASPP on the backbone (GTA recipe) or 1x1 conv on F_S (SYNTHIA).
    With the DAFormer decoder, 'aspp' is the DAFormer classifier on the fused features."""
    attention: bool = True
    """Spatial-attention cross-task distillation; False is the paper's no-attention ablation."""
    backbone: BackboneName = "resnet"
    """resnet (DeepLabV2, the paper's), mit_b0..mit_b5 (SegFormer's Mix Transformer, DAFormer's
    encoder: mit_b5) or dinov2_s / dinov2_b / dinov2_l (DINOv2 ViT, patch 14). The transformers
    need the ``transformers`` package."""
    backbone_depth: Literal[18, 34, 50, 101] = 101
    """ResNet depth: 18/34 basic blocks (fast CPU work), 50/101 bottlenecks (the paper: 101)."""
    backbone_width: int = 64
    """Channels of the ResNet stem; every backbone stage scales with it (64 in the paper). The
    transformers scale their published widths by backbone_width / 64 (64: the published model)."""
    backbone_blocks: tuple[int, ...] | None = None
    """Transformers only: blocks per MiT stage (4 values) or DINOv2 layers (1 value, a multiple of
    4) instead of the published depths; for tiny CPU models. None: the published depths."""
    decoder: Literal["deeplab", "daformer"] = "deeplab"
    """deeplab (ASPP classifiers on the last feature map, stride 8 on the ResNet) or daformer
    (DAFormer's context-aware fusion of all four levels, stride 4)."""
    decoder_width: int = 256
    """DAFormer decoder: channels of the per-level embeddings and of the fusion (256 in DAFormer)."""
    decoder_dropout: float = 0.1
    """DAFormer decoder: channel-dropout rate before each semantic 1x1 classifier (DAFormer: 0.1)."""
    drop_path_rate: float = 0.1
    """Transformers: stochastic-depth rate of the last block, linear from 0 (SegFormer / DAFormer:
    0.1). Like the dropout above it draws from torch's global RNG and is off in eval()."""
    pretrained: str | None = None
    """Transformers: weights for the backbone, loaded by build_model from a local Hugging Face model
    folder (nvidia/mit-b5, facebook/dinov2-base style) or a weights file; never downloads. Models
    loaded from a checkpoint ignore it (the checkpoint has every weight)."""
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
    'zero' zeroes it (DAFormer's classifier). Weights are N(0, 0.01) either way. Only affects
    freshly built models."""

    def __post_init__(self) -> None:
        if self.head_width % 4:
            raise ValueError(f"head_width must be a multiple of 4, got {self.head_width}")
        if self.arch != "corda" and self.initial_semantic != "aspp":
            raise ValueError(f"initial_semantic={self.initial_semantic!r} only applies to arch 'corda'")
        if self.backbone_width < 1 or self.num_classes < 1 or self.decoder_width < 1:
            raise ValueError("backbone_width, decoder_width and num_classes must be positive")
        if self.decoder == "daformer" and self.arch == "reference_noatt":
            raise ValueError("arch 'reference_noatt' is the reference's DeepLab layout; use arch 'corda' "
                             "with decoder 'daformer'")
        if self.backbone == "resnet" and (self.backbone_blocks is not None or self.pretrained is not None):
            raise ValueError("backbone_blocks and pretrained apply to the transformer backbones; the ResNet "
                             "takes DeepLab initialisation files (checkpoint.init, load_init_weights)")
        for name in ("decoder_dropout", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def has_depth(self) -> bool:
        return self.arch != "deeplab"



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
        self.stochastic = True
        if cfg.backbone != "resnet":
            self.backbone = build_transformer_backbone(cfg.backbone, cfg.backbone_width, cfg.backbone_blocks,
                                                       cfg.drop_path_rate)
        else:
            self.backbone = DeepLabResNet(cfg.backbone_depth, cfg.backbone_width, cfg.freeze_bn_stats)
        if cfg.decoder == "daformer":
            self._build_daformer_heads(cfg)
            return
        in_ch = self.backbone.out_channels if cfg.backbone == "resnet" else self.backbone.out_channels[-1]
        width, n = cfg.head_width, cfg.num_classes

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

    def _build_daformer_heads(self, cfg: ModelConfig) -> None:
        levels = self.backbone.stage_channels if cfg.backbone == "resnet" else self.backbone.out_channels
        z_ch, width, n, dropout = cfg.decoder_width, cfg.head_width, cfg.num_classes, cfg.decoder_dropout
        self.decoder = DAFormerDecoder(levels, z_ch)
        if cfg.arch in ("deeplab", "multitask"):
            self.semantic_head = PixelClassifier(z_ch, n, dropout)
            if cfg.arch == "multitask":
                self.depth_decoder = DAFormerDecoder(levels, z_ch)
                self.depth_head = nn.Conv2d(z_ch, 1, 1)
        else:
            self.initial_branches = nn.ModuleDict(
                {"semantic": _task_branch(z_ch, width), "depth": _task_branch(z_ch, width)}
            )
            self.semantic_initial_head = PixelClassifier(z_ch if cfg.initial_semantic == "aspp" else width, n,
                                                         dropout)
            self.depth_initial_head = nn.Conv2d(width, 1, 1)
            self.depth_source_initial_head = nn.Conv2d(width, 1, 1)
            if cfg.attention:
                self.distillation = nn.ModuleDict(
                    {"depth_to_semantic": SpatialAttention(width), "semantic_to_depth": SpatialAttention(width)}
                )
            self.semantic_head = PixelClassifier(width, n, dropout)
            self.depth_head = nn.Conv2d(width, 1, 1)
            self.depth_source_head = nn.Conv2d(width, 1, 1)
        # The DAFormer decoders keep their own (DAFormer's) initialisation.
        _init_conv_bn(nn.ModuleList(m for name, m in self.named_children()
                                    if name not in ("backbone", "decoder", "depth_decoder")),
                      zero_conv_bias=cfg.head_bias_init == "zero")

    @property
    def output_stride(self) -> int:
        """Stride of the predictions: 4 with the DAFormer decoder, else that of the last feature map
        (8 for the ResNet, whose ceil-mode pooling gives ~H/8 + 1; 32 for the transformers)."""
        return 4 if self.cfg.decoder == "daformer" else self.feature_stride

    @property
    def feature_stride(self) -> int:
        """Stride of :meth:`encode`'s feature map: 8 (ResNet) or 32 (transformers)."""
        return 8 if self.cfg.backbone == "resnet" else 32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (B, C, h, w) at :attr:`feature_stride`: (B, 2048, ~H/8,
        ~W/8) for ResNet-101, (B, 512, H/32, W/32) for MiT-B1..B5, (B, D, H/32, W/32) for DINOv2.
        The input of DAFormer's feature distance to an ImageNet model."""
        feats = self.backbone(x)
        return feats if self.cfg.backbone == "resnet" else feats[-1]

    def forward(self, x: torch.Tensor) -> CordaOutput:
        return self.predict_and_encode(x)[0]

    def predict_and_encode(self, x: torch.Tensor) -> tuple[CordaOutput, torch.Tensor]:
        """:meth:`forward` and :meth:`encode` from one backbone pass."""
        cfg = self.cfg
        if cfg.decoder == "daformer":
            return self._daformer(x)
        feats = self.encode(x)  # (B, 2048, h, w) for ResNet-101
        if cfg.arch in ("deeplab", "multitask"):
            return CordaOutput(
                semantic=self.semantic_head(feats),
                depth=self.depth_head(feats) if cfg.has_depth else None,
            ), feats
        f_sem = self.initial_branches["semantic"](feats)  # (B, 256, h, w)
        f_depth = self.initial_branches["depth"](feats)
        if cfg.arch == "reference_noatt":
            return CordaOutput(semantic=self.semantic_head(f_sem), depth=self.depth_head(f_depth)), feats
        initial_in = feats if cfg.initial_semantic == "aspp" else f_sem
        return self._distilled(f_sem, f_depth, self.semantic_initial_head(initial_in)), feats

    def _daformer(self, x: torch.Tensor) -> tuple[CordaOutput, torch.Tensor]:
        cfg = self.cfg
        levels = self.backbone.pyramid(x) if cfg.backbone == "resnet" else self.backbone(x)
        z = self.decoder(levels)  # (B, decoder_width, H/4, W/4)
        if cfg.arch in ("deeplab", "multitask"):
            depth = self.depth_head(self.depth_decoder(levels)) if cfg.arch == "multitask" else None
            return CordaOutput(semantic=self.semantic_head(z), depth=depth), levels[-1]
        f_sem = self.initial_branches["semantic"](z)  # (B, head_width, H/4, W/4)
        f_depth = self.initial_branches["depth"](z)
        initial_in = z if cfg.initial_semantic == "aspp" else f_sem
        return self._distilled(f_sem, f_depth, self.semantic_initial_head(initial_in)), levels[-1]

    def _distilled(self, f_sem: torch.Tensor, f_depth: torch.Tensor, semantic_initial: torch.Tensor) -> CordaOutput:
        """CorDA's cross-task distillation and final heads on the task features F_S, F_D."""
        if self.cfg.attention:
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

    def set_stochastic(self, enabled: bool) -> CordaNet:
        """Turn the dropout and stochastic-depth layers on or off for good: ``train()`` keeps them
        off after ``set_stochastic(False)``. For an EMA teacher that runs in train() mode (batch-norm
        statistics) but must predict without them, as DAFormer's teacher does."""
        self.stochastic = enabled
        return self.train(self.training)

    def train(self, mode: bool = True) -> CordaNet:
        super().train(mode)
        if mode and not self.stochastic:
            for m in self.modules():
                # transformers names its stochastic-depth modules <Model>DropPath
                if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__.endswith("DropPath"):
                    m.eval()
        return self


def build_model(cfg: ModelConfig | None = None, **overrides) -> CordaNet:
    """Build a freshly initialised network: ``build_model(ModelConfig(...))`` or ``build_model(arch=...)``.

    A transformer backbone gets the weights of ``cfg.pretrained`` when it is set.
    """
    cfg = dataclasses.replace(cfg or ModelConfig(), **overrides)
    model = CordaNet(cfg)
    if cfg.pretrained is not None:
        load_pretrained(model.backbone, cfg.pretrained)
    return model


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

    The walk only describes the reference's ResNet: any other backbone (MiT, DINOv2) gets a count
    of 1 for every trainable tensor, i.e. a standard optimiser.
    """
    if not isinstance(backbone, DeepLabResNet):
        return {id(p): 1 for p in backbone.parameters() if p.requires_grad}
    counts: dict[int, int] = {}
    for name in REFERENCE_BACKBONE_BLOCKS:
        for module in getattr(backbone, name).modules():
            for p in module.parameters():
                if p.requires_grad:
                    counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def backbone_norm_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of the backbone's layer norms (none in the ResNet)."""
    return [p for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)
            if p.requires_grad]


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 10.0,
                 multiplicity: Literal["reference", "once"] = "once", no_decay_norms: bool = False) -> list[dict]:
    """Optimiser groups: trainable backbone parameters at ``lr``, every head at ``head_lr_mult * lr``.

    Accepts a DDP-wrapped model. Each group records its learning-rate multiplier under ``lr_mult``
    (a schedule sets ``group["lr"] = lr_i * group["lr_mult"]``) and under ``multiplicity`` how many
    times per step the optimiser applies its update (1 for a standard optimiser). With
    ``multiplicity="reference"`` the backbone is split into one group per count of
    :func:`reference_multiplicity` (named ``backbone_x1``, ``backbone_x3``, ...), for
    :class:`cordaseg.engine.optim.MultiplicitySGD`; ``"once"`` gives one backbone group. Every
    transformer-backbone tensor has multiplicity 1 either way.

    ``no_decay_norms`` moves the backbone's layer-norm parameters into a group ``backbone_norm``
    (at ``lr``) with ``weight_decay`` 0: DAFormer's AdamW exempts parameters whose names contain
    "norm", which in its MiT are exactly the layer norms (its decoder's batch norms keep their
    decay). The other groups carry no ``weight_decay`` key, so the optimiser's default applies.
    """
    net = unwrap(model)
    backbone_ids = {id(p) for p in net.backbone.parameters()}
    heads = [p for p in net.parameters() if p.requires_grad and id(p) not in backbone_ids]
    head_group = {"params": heads, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult, "name": "heads",
                  "multiplicity": 1}
    norms = backbone_norm_parameters(net.backbone) if no_decay_norms else []
    norm_ids = {id(p) for p in norms}
    norm_groups = [{"params": norms, "lr": lr, "lr_mult": 1.0, "name": "backbone_norm", "multiplicity": 1,
                    "weight_decay": 0.0}] if norms else []
    trainable = [p for p in net.backbone.parameters() if p.requires_grad and id(p) not in norm_ids]
    if multiplicity == "once":
        return [{"params": trainable, "lr": lr, "lr_mult": 1.0, "name": "backbone", "multiplicity": 1},
                *norm_groups, head_group]
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
    return groups + norm_groups + [head_group]
