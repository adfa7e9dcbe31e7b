"""Self-supervised depth and pose networks, Monodepth2-style (docs/method.md, "Self-supervised depth";
Godard et al. 2019).

- :class:`DepthEncoder`: a plain stride-32 ResNet built from the project's residual blocks
  (:func:`cordaseg.models.backbone.make_layer`), returning the five feature maps a U-Net decoder
  needs (strides 2, 4, 8, 16, 32). Unlike the segmentation backbone it has no dilation (depth
  needs the coarse scales for its decoder) and trainable batch norm.
- :class:`DisparityDecoder`: upsampling decoder with skip connections and a sigmoid disparity
  output at four scales (scale ``s`` has stride ``2**s``).
- :class:`PoseNetwork`: a ResNet on two stacked frames -> axis-angle rotation and translation.
- :func:`disparity_to_depth`: the sigmoid output ``sigma`` -> depth
  ``1 / (1/max_depth + (1/min_depth - 1/max_depth) * sigma)``.

All networks take RGB images scaled to [0, 1]; they normalise internally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cordaseg.config import ConfigError
from cordaseg.models.backbone import BLOCKS_PER_LAYER, BasicBlock, Bottleneck, make_layer

# Monodepth2 normalises [0, 1] RGB with this mean and deviation (ImageNet-like constants).
_INPUT_MEAN = 0.45
_INPUT_STD = 0.225
# Pose outputs are scaled down so that the initial motion is small (Monodepth2 uses 0.01).
_POSE_SCALE = 0.01


@dataclass
class DepthModelConfig:
    """The depth and pose networks."""

    encoder_depth: Literal[18, 34, 50, 101] = 18
    """ResNet depth of the depth encoder (and of the pose encoder)."""
    encoder_width: int = 64
    """Channels of the encoder's first stage (64 is the standard ResNet; 16 makes a tiny test model)."""
    decoder_width: int = 16
    """Channels of the decoder's finest stage; the stages have 1, 2, 4, 8, 16 times this (Monodepth2: 16)."""
    num_scales: int = 4
    """Disparity outputs at strides 1, 2, 4, 8 (the first ``num_scales`` of them)."""
    min_depth: float = 0.1
    """Depth (metres in stereo modes) that a sigmoid output of 1 means."""
    max_depth: float = 100.0
    """Depth that a sigmoid output of 0 means."""
    initial_depth: float | None = 10.0
    """Depth the untrained network predicts (the disparity heads' bias); None: bias 0, Monodepth2's
    start at sigma 0.5, about 2 * min_depth. A mid-range start keeps the first disparities within a
    few pixels, where the bilinear warp has useful gradients; from sigma 0.5 a small stereo run
    stays stuck at the near limit (measured on the synthetic world, see benchmarks/RESULTS.md)."""

    def __post_init__(self) -> None:
        if self.encoder_width < 4 or self.decoder_width < 2:
            raise ConfigError(f"encoder_width {self.encoder_width} / decoder_width {self.decoder_width} too small")
        if not 1 <= self.num_scales <= 4:
            raise ConfigError(f"num_scales: {self.num_scales} must be 1..4")
        if not 0 < self.min_depth < self.max_depth:
            raise ConfigError(f"min_depth {self.min_depth} and max_depth {self.max_depth} must satisfy "
                              "0 < min_depth < max_depth")
        if self.initial_depth is not None and not self.min_depth < self.initial_depth < self.max_depth:
            raise ConfigError(f"initial_depth: {self.initial_depth} must lie between min_depth and max_depth")


def disparity_to_depth(sigma: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Sigmoid disparity output -> depth, linear in inverse depth between 1/max and 1/min."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return 1.0 / (min_disp + (max_disp - min_disp) * sigma)


def depth_to_disparity(depth: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Inverse of :func:`disparity_to_depth` (clamped to [0, 1])."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return ((1.0 / depth - min_disp) / (max_disp - min_disp)).clamp(0.0, 1.0)


class DepthEncoder(nn.Module):
    """Stride-32 ResNet; ``forward`` gives features at strides 2, 4, 8, 16, 32."""

    def __init__(self, depth: int = 18, width: int = 64, in_frames: int = 1):
        super().__init__()
        if depth not in BLOCKS_PER_LAYER:
            raise ConfigError(f"encoder_depth: {depth} is not one of {sorted(BLOCKS_PER_LAYER)}")
        block = Bottleneck if depth >= 50 else BasicBlock
        counts = BLOCKS_PER_LAYER[depth]
        e = block.expansion
        self.conv1 = nn.Conv2d(3 * in_frames, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_layer(block, width, width, counts[0])
        self.layer2 = make_layer(block, width * e, width * 2, counts[1], stride=2)
        self.layer3 = make_layer(block, width * 2 * e, width * 4, counts[2], stride=2)
        self.layer4 = make_layer(block, width * 4 * e, width * 8, counts[3], stride=2)
        self.channels = (width, width * e, width * 2 * e, width * 4 * e, width * 8 * e)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - _INPUT_MEAN) / _INPUT_STD
        f0 = self.relu(self.bn1(self.conv1(x)))  # (B, w, H/2, W/2)
        f1 = self.layer1(self.maxpool(f0))  # (B, w*e, H/4, W/4)
        f2 = self.layer2(f1)  # (B, 2w*e, H/8, W/8)
        f3 = self.layer3(f2)  # (B, 4w*e, H/16, W/16)
        f4 = self.layer4(f3)  # (B, 8w*e, H/32, W/32)
        return [f0, f1, f2, f3, f4]


def _conv_elu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 conv with reflection padding and ELU, the decoder's unit (Monodepth2)."""
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3), nn.ELU(inplace=True))


class DisparityDecoder(nn.Module):
    """U-Net decoder: ``forward(features)`` -> sigmoid disparities, finest scale first.

    Output ``s`` has shape (B, 1, H / 2**s, W / 2**s) for an input of H x W divisible by 32 and at
    least 64 (the reflection padding of the stride-32 stage needs two pixels).
    """

    def __init__(self, encoder_channels: tuple[int, ...], width: int = 16, num_scales: int = 4,
                 initial_sigma: float = 0.5):
        super().__init__()
        self.num_scales = num_scales
        dec = [width * 2**i for i in range(5)]  # (16, 32, 64, 128, 256) for width 16
        self.reduce = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(4, -1, -1):
            in_ch = encoder_channels[-1] if i == 4 else dec[i + 1]
            self.reduce.append(_conv_elu(in_ch, dec[i]))
            skip = encoder_channels[i - 1] if i > 0 else 0
            self.fuse.append(_conv_elu(dec[i] + skip, dec[i]))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dec[s], 1, 3)) for s in range(num_scales))
        for head in self.heads:
            nn.init.constant_(head[1].bias, math.log(initial_sigma / (1.0 - initial_sigma)))  # logit

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        disparities: dict[int, torch.Tensor] = {}
        for step, i in enumerate(range(4, -1, -1)):
            x = F.interpolate(self.reduce[step](x), scale_factor=2.0, mode="nearest")  # (B, dec_i, 2h, 2w)
            if i > 0:
                x = torch.cat([x, features[i - 1]], dim=1)
            x = self.fuse[step](x)
            if i < self.num_scales:
                disparities[i] = torch.sigmoid(self.heads[i](x))  # (B, 1, H/2^i, W/2^i)
        return [disparities[s] for s in range(self.num_scales)]


class DepthNetwork(nn.Module):
    """Encoder + decoder: ``forward(images (B, 3, H, W) in [0, 1])`` -> disparities per scale."""

    def __init__(self, cfg: DepthModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = DepthEncoder(cfg.encoder_depth, cfg.encoder_width)
        initial_sigma = 0.5
        if cfg.initial_depth is not None:
            initial_sigma = float(depth_to_disparity(torch.tensor(cfg.initial_depth), cfg.min_depth, cfg.max_depth))
        self.decoder = DisparityDecoder(self.encoder.channels, cfg.decoder_width, cfg.num_scales, initial_sigma)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.encoder(images))

    def predict_depth(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) depth of the finest scale (H, W need not be multiples of 32)."""
        h, w = images.shape[-2:]
        # Multiples of 32, and at least 64: the coarsest features need 2 pixels for reflection padding.
        ph, pw = max(64, -(-h // 32) * 32), max(64, -(-w // 32) * 32)
        if (ph, pw) != (h, w):
            images = F.interpolate(images, size=(ph, pw), mode="bilinear", align_corners=False)
        sigma = self.forward(images)[0]
        if (ph, pw) != (h, w):
            sigma = F.interpolate(sigma, size=(h, w), mode="bilinear", align_corners=False)
        return disparity_to_depth(sigma, self.cfg.min_depth, self.cfg.max_depth)


class PoseNetwork(nn.Module):
    """ResNet on two stacked frames -> (axis-angle (B, 3), translation (B, 3)) from the first
    frame's camera to the second's (points in frame 1's camera -> frame 2's camera)."""

    def __init__(self, cfg: DepthModelConfig):
        super().__init__()
        self.encoder = DepthEncoder(cfg.encoder_depth, cfg.encoder_width, in_frames=2)
        width = 4 * cfg.decoder_width
        self.head = nn.Sequential(
            nn.Conv2d(self.encoder.channels[-1], width, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 6, 1),
        )

    def forward(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(torch.cat([frame_a, frame_b], dim=1))[-1]
        motion = _POSE_SCALE * self.head(features).mean(dim=(2, 3))  # (B, 6)
        return motion[:, :3], motion[:, 3:]
