"""DAFormer's context-aware fusion decoder (Hoyer et al., "DAFormer: Improving Network
Architectures and Training Strategies for Domain-Adaptive Semantic Segmentation", CVPR 2022, the
decoder section).

On the four backbone levels ``x_1..x_4`` (strides 4, 8, 16, 32 for MiT):

    e_i = conv1x1(x_i)                          per-level linear embedding to ``width`` (256)
    z   = concat(upsample(e_1..e_4) to stride 4)   (B, 4 * width, H/4, W/4)
    f   = bottleneck3x3(concat(conv1x1(z), sep3x3_d6(z), sep3x3_d12(z), sep3x3_d18(z)))

Every convolution of the fusion is followed by batch norm and ReLU; ``sep3x3_d`` is a depthwise
3x3 with dilation ``d`` followed by a pointwise 1x1 (each with BN + ReLU), and there is no
image-pooling branch. This is the layout of DAFormer's released configuration (sep-ASPP fusion
with dilations 1, 6, 12, 18 and a 3x3 bottleneck; the dilation-1 branch is a 1x1 conv), so its
checkpoints load through :mod:`cordaseg.models.convert_mmseg`. The decoder predicts at stride 4
(the size of the first level).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FUSION_DILATIONS = (1, 6, 12, 18)
"""Dilations of the parallel fusion branches (1 is the 1x1 branch)."""


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        padding = dilation * (kernel // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Depthwise 3x3 (dilated) and pointwise 1x1, each with BN and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int):
        super().__init__()
        self.depthwise = ConvBNReLU(in_ch, in_ch, 3, dilation=dilation, groups=in_ch)
        self.pointwise = ConvBNReLU(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ContextFusion(nn.Module):
    """Parallel 1x1 and dilated depthwise-separable 3x3 branches, concatenated, then a 3x3 bottleneck."""

    def __init__(self, in_ch: int, width: int, dilations: Sequence[int] = FUSION_DILATIONS):
        super().__init__()
        self.branches = nn.ModuleList(
            ConvBNReLU(in_ch, width, 1) if d == 1 else SeparableConvBNReLU(in_ch, width, d) for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(dilations) * width, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))


class DAFormerDecoder(nn.Module):
    """Multi-level features -> fused features (B, width, h_1, w_1) at the first level's stride."""

    def __init__(self, in_channels: Sequence[int], width: int = 256):
        super().__init__()
        self.out_channels = width
        self.embed = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.fusion = ContextFusion(len(in_channels) * width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DAFormer's initialisation: the embeddings keep PyTorch's default (that of a linear
        layer), the fusion convolutions are Kaiming-normal (fan-out, ReLU), BN weight 1, bias 0."""
        for m in self.fusion.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        embedded = []
        for embed, x in zip(self.embed, features, strict=True):
            e = embed(x)  # (B, width, h_i, w_i)
            if e.shape[-2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            embedded.append(e)
        return self.fusion(torch.cat(embedded, dim=1))  # (B, 4 * width, h_1, w_1) -> (B, width, h_1, w_1)


class PixelClassifier(nn.Module):
    """Channel dropout (``nn.Dropout2d``, as DAFormer's classifier) then a 1x1 conv with bias."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(x))
