"""DeepLabV2 "caffe" ResNet backbone (docs/method.md, "Network"), one builder for depths 18/34/50/101.

Differences from a torchvision ResNet, all from DeepLabV2:
- the max-pool uses ``ceil_mode=True`` (a 512 input gives 129 after the stem, 65 at the output);
- a bottleneck carries its stride on the first 1x1 conv, not on the 3x3;
- layer3 and layer4 keep stride 1 and dilate their 3x3 convs by 2 and 4 (output stride 8), and
  every layer's first block has a projection shortcut, also where only the dilation changes;
- batch-norm affine parameters are frozen (``requires_grad=False``); the statistics still update
  in ``train()`` mode unless ``freeze_bn_stats`` is set.

Depths 18/34 use basic blocks (for fast CPU work); 50/101 use bottlenecks. ``width`` scales every
channel count (64 is the paper's), so the synthetic-world demo can run a narrow network.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS_PER_LAYER = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _init_conv_bn(module: nn.Module, zero_conv_bias: bool = True) -> None:
    """Reference initialisation: conv weights ~ N(0, 0.01), BN weight 1 and bias 0.

    Conv biases are zeroed, or with ``zero_conv_bias=False`` keep PyTorch's default
    initialisation from construction (uniform in +-1/sqrt(fan_in)), as the reference's heads do.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None and zero_conv_bias:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Bottleneck(nn.Module):
    """1x1 (stride) -> 3x3 (dilation) -> 1x1 (x4 channels), with a residual connection."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1, project: bool = False):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            if project
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """3x3 (stride, dilation) -> 3x3 (dilation), with a residual connection."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1, project: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
            if project
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_layer(block: type[nn.Module], in_ch: int, planes: int, blocks: int, stride: int = 1,
               dilation: int = 1) -> nn.Sequential:
    """A ResNet stage; its first block always has a projection shortcut (DeepLabV2)."""
    layers = [block(in_ch, planes, stride=stride, dilation=dilation, project=True)]
    out_ch = planes * block.expansion
    layers += [block(out_ch, planes, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DeepLabResNet(nn.Module):
    """Dilated ResNet with output stride 8. ``forward(x)`` gives (B, out_channels, ~H/8, ~W/8)."""

    def __init__(self, depth: int = 101, width: int = 64, freeze_bn_stats: bool = False):
        super().__init__()
        if depth not in BLOCKS_PER_LAYER:
            raise ValueError(f"backbone depth must be one of {sorted(BLOCKS_PER_LAYER)}, got {depth}")
        block = Bottleneck if depth >= 50 else BasicBlock
        counts = BLOCKS_PER_LAYER[depth]
        self.freeze_bn_stats = freeze_bn_stats
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        w = width
        self.layer1 = make_layer(block, w, w, counts[0])
        self.layer2 = make_layer(block, w * block.expansion, w * 2, counts[1], stride=2)
        self.layer3 = make_layer(block, w * 2 * block.expansion, w * 4, counts[2], dilation=2)
        self.layer4 = make_layer(block, w * 4 * block.expansion, w * 8, counts[3], dilation=4)
        self.out_channels = w * 8 * block.expansion
        self.stage_channels = tuple(w * k * block.expansion for k in (1, 2, 4, 8))
        _init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepLabResNet:
        super().train(mode)
        if mode and self.freeze_bn_stats:
            # Frozen statistics: BN normalises with its running stats even while training.
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, H/4, W/4), ceil
        x = self.layer2(self.layer1(x))  # (B, 2w*e, H/8, W/8)
        return self.layer4(self.layer3(x))  # (B, 8w*e, H/8, W/8): dilated, no more striding

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs, for a multi-level decoder (DAFormer's): strides 4, 8, 8, 8 (layer3
        and layer4 are dilated), channels :attr:`stage_channels`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)  # (B, w*e, H/4, W/4)
        c2 = self.layer2(c1)  # (B, 2w*e, H/8, W/8)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]
