"""Transformer backbones through Hugging Face ``transformers``: SegFormer's Mix Transformer (MiT)
and DINOv2 ViTs, each returning four feature maps at strides 4, 8, 16 and 32.

- **MiT-B0..B5** (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation
  with Transformers", NeurIPS 2021) is the encoder of DAFormer (Hoyer et al., CVPR 2022) and
  MIC. ``SegformerModel`` gives its four stage outputs. The block and stage layer norms use
  eps 1e-6, as the SegFormer and DAFormer code does (``transformers`` builds them with 1e-5).
- **DINOv2 ViT-S/B/L** (Oquab et al., "DINOv2: Learning Robust Visual Features without
  Supervision", 2023), patch 14: the tokens of four evenly spaced layers (3, 6, 9, 12 of 12;
  6, 12, 18, 24 of 24), each through the final layer norm (DINOv2's intermediate-layer
  features), are reshaped to maps and resampled bilinearly to strides 4, 8, 16 and 32 (a simple
  feature pyramid without parameters: the decoder's per-level embeddings follow). The image is
  first resized to the nearest multiple of 14 when it is not one, so the maps cover it exactly.

Both take the project's input (BGR minus the caffe mean, 0..255 scale,
:mod:`cordaseg.data.normalization`) and convert it inside the model to the RGB ImageNet
normalisation their weights were trained with (:class:`ImageNetInput`, no parameters).

Widths scale with ``backbone_width / 64`` (64 gives the published models) and ``blocks``
replaces the published depths, so tiny variants run on a CPU in tests. ``transformers`` is
imported when a backbone is built, never at import time.

Weights: :func:`load_pretrained` reads a local Hugging Face folder (``save_pretrained`` layout,
e.g. a copy of ``nvidia/mit-b5`` or ``facebook/dinov2-base``) or a single weights file, with
``local_files_only``; nothing is downloaded. Licences: the MiT weights are NVIDIA's
(non-commercial; check NVIDIA's SegFormer licence), DINOv2's are Apache-2.0.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cordaseg.data.normalization import CAFFE_MEAN_BGR
from cordaseg.errors import CheckpointError, CordasegError
from cordaseg.models.checkpoint_file import read_file
from cordaseg.models.mmseg_keys import original_mit_to_encoder


@dataclass(frozen=True)
class MiTSpec:
    """Published MiT hyper-parameters, per stage."""

    hidden_sizes: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)


MIT_VARIANTS: dict[str, MiTSpec] = {
    "mit_b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTSpec((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTSpec((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTSpec((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTSpec((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTSpec((64, 128, 320, 512), (3, 6, 40, 3)),
}
"""SegFormer's MiT-B0..B5 (patch sizes 7/3/3/3, strides 4/2/2/2, MLP ratio 4 in every stage)."""


@dataclass(frozen=True)
class ViTSpec:
    """Published DINOv2 ViT hyper-parameters."""

    hidden_size: int
    layers: int
    heads: int


DINOV2_VARIANTS: dict[str, ViTSpec] = {
    "dinov2_s": ViTSpec(384, 12, 6),
    "dinov2_b": ViTSpec(768, 12, 12),
    "dinov2_l": ViTSpec(1024, 24, 16),
}
"""DINOv2 ViT-S/14, ViT-B/14, ViT-L/14 (MLP ratio 4, layer scale, 518x518 position embeddings)."""

DINOV2_PATCH = 14
DINOV2_IMAGE_SIZE = 518  # the released models' position-embedding grid is 37 x 37 patches
PYRAMID_STRIDES = (4, 8, 16, 32)

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def import_transformers() -> Any:
    """The ``transformers`` module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise CordasegError("the MiT and DINOv2 backbones need the transformers package: "
                            "pip install 'cordaseg[depth]'") from err
    return transformers


def scaled(width: int, backbone_width: int, heads: int, what: str) -> int:
    """``width * backbone_width / 64``, refused unless the attention heads divide it."""
    value = width * backbone_width // 64
    if value < heads or value % heads or width * backbone_width % 64:
        raise ValueError(f"backbone_width={backbone_width} gives {what} {width * backbone_width / 64:g} "
                         f"channels, not a multiple of its {heads} attention heads")
    return value


class ImageNetInput(nn.Module):
    """Project input (BGR minus the caffe mean, 0..255) -> RGB with ImageNet mean and std.

    One per-channel affine map and a channel flip; the constants are buffers outside the state
    dict, so they never reach a checkpoint.
    """

    def __init__(self, mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR):
        super().__init__()
        mean_rgb = torch.tensor(mean_bgr[::-1], dtype=torch.float32)
        std = 255.0 * torch.tensor(IMAGENET_STD_RGB)
        self.register_buffer("scale", (1.0 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_rgb - 255.0 * torch.tensor(IMAGENET_MEAN_RGB)) / std).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1) * self.scale + self.shift  # (B, 3, H, W) BGR -> RGB


class MiTBackbone(nn.Module):
    """SegFormer's Mix Transformer; ``forward(x)`` gives 4 maps (B, C_i, ceil(H/s), ceil(W/s)), s = 4..32."""

    family = "segformer"

    def __init__(self, name: str, backbone_width: int = 64, blocks: tuple[int, ...] | None = None,
                 drop_path_rate: float = 0.1):
        super().__init__()
        spec = MIT_VARIANTS[name]
        depths = tuple(blocks) if blocks is not None else spec.depths
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"backbone_blocks for {name} must be 4 positive stage depths, got {blocks!r}")
        hidden = tuple(scaled(w, backbone_width, h, f"{name} stage {i + 1}")
                       for i, (w, h) in enumerate(zip(spec.hidden_sizes, spec.heads)))
        transformers = import_transformers()
        self.hf_config = transformers.SegformerConfig(
            hidden_sizes=list(hidden), depths=list(depths), num_attention_heads=list(spec.heads),
            sr_ratios=list(spec.sr_ratios), patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
            mlp_ratios=[4, 4, 4, 4], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            drop_path_rate=drop_path_rate, reshape_last_stage=True,
        )
        self.input_norm = ImageNetInput()
        self.encoder = transformers.SegformerModel(self.hf_config)
        set_mit_layer_norm_eps(self.encoder)
        self.out_channels = hidden
        self.strides = PYRAMID_STRIDES

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.encoder(pixel_values=self.input_norm(x), output_hidden_states=True)
        return list(out.hidden_states)  # the 4 stage outputs (B, C_i, H/s_i, W/s_i)


def set_mit_layer_norm_eps(encoder: nn.Module) -> None:
    """eps 1e-6 for the block and stage layer norms, as in SegFormer's MiT; the patch-embedding and
    sequence-reduction norms keep 1e-5 there as here. Found by name, so both module layouts of
    ``transformers`` (4.x: ``encoder.block``, 5.x: ``stages.N.blocks``) are covered."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.LayerNorm) and "patch_embeddings" not in name and "attention" not in name:
            module.eps = 1e-6


def evenly_spaced_layers(layers: int) -> tuple[int, int, int, int]:
    """1-based indices of the 4 layers whose tokens form the pyramid (e.g. 3, 6, 9, 12 of 12)."""
    if layers < 4 or layers % 4:
        raise ValueError(f"a DINOv2 backbone needs a multiple of 4 layers, got {layers}")
    return tuple(layers // 4 * k for k in range(1, 5))


class DINOv2Backbone(nn.Module):
    """DINOv2 ViT with a parameter-free pyramid; ``forward(x)`` gives 4 maps of D channels at
    (ceil(H/s), ceil(W/s)), s = 4, 8, 16, 32."""

    family = "dinov2"

    def __init__(self, name: str, backbone_width: int = 64, blocks: tuple[int, ...] | None = None,
                 drop_path_rate: float = 0.1):
        super().__init__()
        spec = DINOV2_VARIANTS[name]
        if blocks is not None and len(blocks) != 1:
            raise ValueError(f"backbone_blocks for {name} is one layer count, got {blocks!r}")
        layers = blocks[0] if blocks is not None else spec.layers
        self.layers = evenly_spaced_layers(layers)
        hidden = scaled(spec.hidden_size, backbone_width, spec.heads, name)
        transformers = import_transformers()
        self.hf_config = transformers.Dinov2Config(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=spec.heads, mlp_ratio=4,
            patch_size=DINOV2_PATCH, image_size=DINOV2_IMAGE_SIZE, layerscale_value=1.0,
            use_swiglu_ffn=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            drop_path_rate=drop_path_rate,
        )
        self.input_norm = ImageNetInput()
        self.encoder = transformers.Dinov2Model(self.hf_config)
        # The mask token only enters masked-image pretraining; segmentation never uses it.
        self.encoder.embeddings.mask_token.requires_grad_(False)
        self.out_channels = (hidden,) * 4
        self.strides = PYRAMID_STRIDES

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch, _, height, width = x.shape
        grid = (max(1, round(height / DINOV2_PATCH)), max(1, round(width / DINOV2_PATCH)))
        pixels = self.input_norm(x)
        if (height, width) != (grid[0] * DINOV2_PATCH, grid[1] * DINOV2_PATCH):
            pixels = F.interpolate(pixels, size=(grid[0] * DINOV2_PATCH, grid[1] * DINOV2_PATCH),
                                   mode="bilinear", align_corners=False)
        out = self.encoder(pixel_values=pixels, output_hidden_states=True)
        maps = []
        for layer, stride in zip(self.layers, self.strides):
            tokens = self.encoder.layernorm(out.hidden_states[layer])[:, 1:]  # (B, h*w, D) without CLS
            fmap = tokens.transpose(1, 2).reshape(batch, -1, *grid)  # (B, D, h, w) at stride 14
            size = (math.ceil(height / stride), math.ceil(width / stride))
            # antialias only acts when shrinking (the stride-16 and -32 levels)
            maps.append(F.interpolate(fmap, size=size, mode="bilinear", align_corners=False, antialias=True))
        return maps


TRANSFORMER_BACKBONES = {**{k: MiTBackbone for k in MIT_VARIANTS}, **{k: DINOv2Backbone for k in DINOV2_VARIANTS}}


def build_transformer_backbone(name: str, backbone_width: int, blocks: tuple[int, ...] | None,
                               drop_path_rate: float) -> MiTBackbone | DINOv2Backbone:
    return TRANSFORMER_BACKBONES[name](name, backbone_width, blocks, drop_path_rate)


# ----------------------------------------------------------------------------------------------
# Pretrained weights from local files

# Hyper-parameters that shape the computation without showing in tensor shapes: a folder whose
# config differs in one of them is refused rather than loaded into the wrong network.
_CONFIG_FIELDS = {
    "segformer": ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "patch_sizes", "strides",
                  "mlp_ratios", "hidden_act"),
    "dinov2": ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "mlp_ratio",
               "use_swiglu_ffn", "qkv_bias", "hidden_act"),
}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HEAD_PREFIXES = ("classifier.", "decode_head.", "head.")
"""Task heads stored beside an encoder in Hugging Face files; skipped when loading the encoder."""


def load_pretrained(backbone: MiTBackbone | DINOv2Backbone, path: str | Path) -> None:
    """Load encoder weights from a local folder or weights file; refuse, naming the problem, when
    they do not fill the encoder exactly.

    - a folder with ``config.json`` (``save_pretrained`` layout, e.g. ``nvidia/mit-b5``,
      ``facebook/dinov2-small``): its config must match the configured variant; heads stored with
      the encoder (an ImageNet classifier) are ignored;
    - a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file of such weights (``transformers``
      names, any version), or, for MiT, SegFormer's original ImageNet file (``patch_embed1.*``,
      ``block1.*``, ... as DAFormer loads it; its ``head.*`` classifier is skipped).
    """
    path = Path(path)
    if path.is_dir():
        _load_folder(backbone, path, check_config=True)
    elif path.is_file() and path.suffix in WEIGHT_SUFFIXES:
        state = _read_weights(path)
        if isinstance(backbone, MiTBackbone) and _is_original_mit(state):
            backbone.encoder.load_state_dict(original_mit_to_encoder(state, backbone.encoder.state_dict(), path))
            return
        with tempfile.TemporaryDirectory(prefix="cordaseg-pretrained-") as tmp:
            # transformers renames older checkpoint layouts only when it loads a folder
            backbone.hf_config.save_pretrained(tmp)
            if path.suffix == ".safetensors":
                (Path(tmp) / "model.safetensors").symlink_to(path.resolve())
            else:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"))
            _load_folder(backbone, Path(tmp), check_config=False, shown=path)
    elif path.exists():
        raise CheckpointError(f"{path}: pretrained weights must be a Hugging Face model folder or a "
                              f"{' / '.join(WEIGHT_SUFFIXES)} file")
    else:
        raise CheckpointError(f"{path}: pretrained weights not found (nothing is downloaded; give a local folder or file)")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    obj = read_file(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return obj


def _is_original_mit(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("patch_embed1.", "backbone.patch_embed1.")) for k in state)


def _load_folder(backbone: MiTBackbone | DINOv2Backbone, folder: Path, check_config: bool,
                 shown: Path | None = None) -> None:
    shown = shown or folder
    transformers = import_transformers()
    cls = type(backbone.encoder)
    if check_config:
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: not a Hugging Face model folder (no config.json)")
        try:
            theirs = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... for bad folders
            raise CheckpointError(f"{folder}: unreadable config.json ({_first_line(err)})") from err
        if theirs.model_type != backbone.family:
            raise CheckpointError(f"{folder}: a {theirs.model_type!r} model, not {backbone.family!r}")
        for field in _CONFIG_FIELDS[backbone.family]:
            ours, other = getattr(backbone.hf_config, field), getattr(theirs, field, None)
            if _plain(ours) != _plain(other):
                raise CheckpointError(f"{folder}: its {field} is {_plain(other)!r}, the configured backbone has "
                                      f"{_plain(ours)!r} (pick the matching model.backbone)")
    hf_logging = transformers.utils.logging
    bars_were_disabled = not hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # its load report would repeat, as a table, what is checked below
    try:
        loaded, info = cls.from_pretrained(str(folder), config=backbone.hf_config, local_files_only=True,
                                           output_loading_info=True)
    except Exception as err:  # transformers raises OSError, RuntimeError (shapes), ... for weights it cannot load
        raise CheckpointError(f"{shown}: weights that do not fit the configured backbone ({_first_line(err)})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_were_disabled:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(m) for m in info.get("mismatched_keys") or ())
    # A task head saved with the encoder (an ImageNet classifier) is not ours to load; any other
    # extra tensor means the file holds a larger encoder than the configured one.
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if not k.startswith(HEAD_PREFIXES))
    if missing or mismatched or unexpected:
        if missing:
            what = f"{len(missing)} encoder tensor(s) missing (first: {missing[0]})"
        elif mismatched:
            what = f"shape mismatch: {mismatched[0]}"
        else:
            what = f"{len(unexpected)} tensor(s) the configured encoder lacks (first: {unexpected[0]})"
        raise CheckpointError(f"{shown}: weights that do not fit the configured backbone: {what}")
    backbone.encoder.load_state_dict(loaded.state_dict(), strict=True)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
