"""Depth from a pretrained depth-estimation model of Hugging Face ``transformers``.

CorDA only needs depth that costs no labels (Wang et al., ICCV 2021); a model pretrained elsewhere
(Depth Anything, DPT, ZoeDepth, ...) is a third source beside the stereo-matcher files and the
self-supervised network of this package. :func:`load_pretrained_depth` opens any folder that
``AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True)`` loads, with the
folder's image processor; nothing is downloaded.

What the model predicts decides how it is aligned (:mod:`cordaseg.depth.align`):

- **relative**: affine-invariant disparity (MiDaS / DPT, Depth Anything's relative models);
- **metric**: depth in metres (ZoeDepth, GLPN, Depth Pro, Depth Anything's metric models).

:func:`model_output_kind` reads it from the config (Depth Anything configs say it in
``depth_estimation_type``; the other families are one kind each); ``output=`` overrides it.

Without an image processor in the folder, images are normalised with the ImageNet mean and
standard deviation and resized (bicubic) to a height of 518 pixels keeping the aspect ratio, both
sides rounded to a multiple of the model's patch size (32 when the config has none): Depth
Anything's preprocessing. A ``size`` replaces the processor's resizing (its normalisation is kept).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cordaseg.errors import CordasegError

MODEL_OUTPUTS = ("relative", "metric")
# Model families that predict one kind only (``config.model_type``).
METRIC_MODEL_TYPES = ("zoedepth", "glpn", "depth_pro")
RELATIVE_MODEL_TYPES = ("dpt",)
# Preprocessing when the folder has no image processor (Depth Anything's).
DEFAULT_IMAGE_MEAN = (0.485, 0.456, 0.406)
DEFAULT_IMAGE_STD = (0.229, 0.224, 0.225)
DEFAULT_SHORT_SIDE = 518
DEFAULT_SIZE_MULTIPLE = 32
PROCESSOR_FILE = "preprocessor_config.json"


def import_transformers() -> Any:
    """The ``transformers`` module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise CordasegError("depth from a pretrained model needs the transformers package: "
                            "pip install 'cordaseg[depth]'") from err
    return transformers


def model_output_kind(config: Any) -> str | None:
    """"relative" or "metric" from a transformers config, or None when the config does not say."""
    kind = getattr(config, "depth_estimation_type", None)
    if kind in MODEL_OUTPUTS:
        return kind
    model_type = getattr(config, "model_type", None)
    if model_type in METRIC_MODEL_TYPES:
        return "metric"
    if model_type in RELATIVE_MODEL_TYPES:
        return "relative"
    return None


def _patch_size(config: Any) -> int:
    for owner in (config, getattr(config, "backbone_config", None)):
        patch = getattr(owner, "patch_size", None)
        if isinstance(patch, int) and patch > 0:
            return patch
    return DEFAULT_SIZE_MULTIPLE


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:200]}"


class PretrainedDepthModel:
    """A loaded model with its preprocessing: :meth:`prepare` one image (any thread), then
    :meth:`predict` a batch of prepared images of one input shape (:meth:`batch_key`)."""

    def __init__(self, path: Path, model: torch.nn.Module, processor: Any | None, output: str,
                 device: torch.device, size: tuple[int, int] | None = None):
        self.path, self.model, self.processor, self.output = path, model, processor, output
        self.device, self.size = device, size
        self.own_preprocessing = processor is None or size is not None
        normalize = processor is None or getattr(processor, "do_normalize", True)
        mean = getattr(processor, "image_mean", None) or DEFAULT_IMAGE_MEAN
        std = getattr(processor, "image_std", None) or DEFAULT_IMAGE_STD
        self.mean = torch.tensor(mean if normalize else (0.0, 0.0, 0.0), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std if normalize else (1.0, 1.0, 1.0), dtype=torch.float32).view(1, 3, 1, 1)
        self.multiple = _patch_size(model.config)

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", "unknown"))

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(W, H) the own preprocessing resizes an image of ``height`` x ``width`` to."""
        if self.size is not None:
            return tuple(self.size)
        short = DEFAULT_SHORT_SIDE / min(height, width)
        m = self.multiple
        return (max(m, round(width * short / m) * m), max(m, round(height * short / m) * m))

    def prepare(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 model input on the CPU."""
        if not self.own_preprocessing:
            return self.processor(images=rgb, return_tensors="pt")["pixel_values"].float()
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
        width, height = self.input_size(h, w)
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        return (x.clamp(0.0, 1.0) - self.mean) / self.std

    @staticmethod
    def batch_key(inputs: torch.Tensor) -> tuple[int, ...]:
        return tuple(inputs.shape)

    @torch.no_grad()
    def predict(self, inputs: list[torch.Tensor], shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Raw output (disparity or metres, float64) of prepared images, at their (H, W) ``shapes``."""
        x = torch.cat(inputs).to(self.device)  # (B, 3, h, w)
        outputs = self.model(pixel_values=x)
        if not self.own_preprocessing and hasattr(self.processor, "post_process_depth_estimation"):
            # The processor undoes its own resizing and padding (ZoeDepth pads its inputs).
            kwargs: dict[str, Any] = {"target_sizes": list(shapes)}
            if "source_sizes" in _parameters(self.processor.post_process_depth_estimation):
                kwargs["source_sizes"] = list(shapes)
            results = self.processor.post_process_depth_estimation(outputs, **kwargs)
            return [r["predicted_depth"].double().cpu().numpy() for r in results]
        raw = outputs.predicted_depth.float()  # (B, h', w')
        maps = []
        for i, (h, w) in enumerate(shapes):
            one = raw[i][None, None]  # (1, 1, h', w')
            if self.output == "metric":  # interpolate inverse depth, smooth across far backgrounds
                one = 1.0 / F.interpolate(1.0 / one.clamp_min(1e-6), size=(h, w), mode="bilinear",
                                          align_corners=False)
            else:
                one = F.interpolate(one, size=(h, w), mode="bilinear", align_corners=False)
            maps.append(one[0, 0].double().cpu().numpy())
        return maps


def _parameters(function: Any) -> set[str]:
    return set(inspect.signature(function).parameters)


def load_pretrained_depth(path: str | Path, device: str | torch.device = "cpu", output: str | None = None,
                          size: tuple[int, int] | None = None) -> PretrainedDepthModel:
    """Load the depth model in the folder ``path`` (and its image processor, when it has one).

    ``output`` ("relative" or "metric") overrides what the config says the model predicts; it is
    required when the config does not say. Every problem is a one-line :class:`CordasegError`
    naming the folder.
    """
    path = Path(path)
    if output is not None and output not in MODEL_OUTPUTS:
        raise CordasegError(f"--output: {output!r} is not one of {', '.join(MODEL_OUTPUTS)}")
    if not path.is_dir():
        raise CordasegError(f"{path}: model folder not found")
    if not (path / "config.json").is_file():
        raise CordasegError(f"{path}: not a transformers model folder (no config.json)")
    transformers = import_transformers()
    hf_logging = transformers.utils.logging
    bars_were_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a loading bar per model would interleave with the export's own
    try:
        model, info = transformers.AutoModelForDepthEstimation.from_pretrained(
            str(path), local_files_only=True, output_loading_info=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... for folders it cannot load
        raise CordasegError(f"{path}: not a depth-estimation model transformers can load ({_one_line(err)})") from err
    finally:
        if not bars_were_disabled:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise CordasegError(f"{path}: the weights lack {len(missing)} tensors of the model (first: {missing[0]})")
    processor = None
    if (path / PROCESSOR_FILE).is_file():
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        except Exception as err:  # as above: many kinds for a broken processor file
            raise CordasegError(f"{path / PROCESSOR_FILE}: cannot load the image processor ({_one_line(err)})") from err
    if processor is not None and getattr(processor, "do_pad", False) and size is None \
            and not hasattr(processor, "post_process_depth_estimation"):
        raise CordasegError(f"{path}: the image processor pads its inputs and this transformers version cannot "
                            "undo it (no post_process_depth_estimation); upgrade transformers or pass --size")
    kind = output or model_output_kind(model.config)
    if kind is None:
        raise CordasegError(f"{path}: cannot tell whether this {model.config.model_type} model predicts relative "
                            "disparity or metric depth; pass --output relative or --output metric")
    device = torch.device(device)
    return PretrainedDepthModel(path, model.to(device).eval(), processor, kind, device, size)
