"""The project's checkpoint format and ``load_model`` for any supported file.

A project checkpoint is a dict that ``torch.load(..., weights_only=True)`` reads:

- ``format``: ``"cordaseg"``; ``format_version``: :data:`FORMAT_VERSION`;
- ``model_config``: the :class:`ModelConfig` as a dict; ``model``: the student's state dict;
- training checkpoints add ``teacher`` (the EMA model), ``optimizer``, ``iteration``, ``config``
  (the whole resolved training config), ``rng`` and ``data_state``.

Reference files (training checkpoints with ``model`` / ``ema_model`` / ``optimizer`` /
``iteration`` / ``config``, or bare state dicts, ``module.``-prefixed or not) are converted in
memory by :mod:`cordaseg.models.convert`, DAFormer / MIC files by
:mod:`cordaseg.models.convert_mmseg`. Every file is read by
:func:`cordaseg.models.checkpoint_file.read_file`, which finds out what it is before anything is
unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cordaseg.config import ConfigError, from_dict, to_dict
from cordaseg.errors import CheckpointError
from cordaseg.models.checkpoint_file import (
    FORMAT,
    FORMAT_VERSION,
    TRUST_HINT,
    is_project_checkpoint,
    read_file,
)
from cordaseg.models.convert import (
    converted_payload,
    detect_variant,
    infer_shape_config,
    load_backbone_state,
    reference_to_project,
)
from cordaseg.models.convert_mmseg import convert_mmseg_checkpoint, is_mmseg_checkpoint
from cordaseg.models.corda import CordaNet, ModelConfig
from cordaseg.models.state_dicts import check_keys, strip_module_prefix
from cordaseg.runtime.distributed import unwrap
from cordaseg.runtime.files import atomic_save


def model_payload(model: torch.nn.Module, cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """The project checkpoint dict for ``model`` (a DDP wrapper is unwrapped)."""
    net = unwrap(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": to_dict(cfg),
        "model": net.state_dict(),
        **extra,
    }


def _state_dicts_of_reference(obj: Any, path: Path) -> tuple[dict, dict | None, int | None]:
    """(student state, teacher state or None, iteration or None) of a reference file."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        teacher = obj.get("ema_model")
        teacher = teacher if isinstance(teacher, dict) else None
        iteration = obj.get("iteration")
        return obj["model"], teacher, iteration if isinstance(iteration, int) else None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None, None
    raise CheckpointError(f"{path}: neither a cordaseg checkpoint, a reference checkpoint nor a state dict")


def convert_reference(obj: Any, path: str | Path = "<memory>", variant: str | None = None) -> dict[str, Any]:
    """A reference checkpoint (already loaded) -> the project's checkpoint dict.

    The reference optimiser state is not carried over: its parameter order is the reference's,
    so a converted file is for evaluation and fine-tuning, not for resuming the reference's run.
    DAFormer and MIC checkpoints (mmsegmentation) go through :mod:`cordaseg.models.convert_mmseg`.
    """
    if is_mmseg_checkpoint(obj):
        return convert_mmseg_checkpoint(obj, path)
    student, teacher, iteration = _state_dicts_of_reference(obj, Path(path))
    student = strip_module_prefix(student)
    variant = variant or detect_variant(student)
    cfg = infer_shape_config(student, variant)
    teacher = None if teacher is None else strip_module_prefix(teacher)
    return converted_payload(
        cfg, lambda state, target, _: reference_to_project(state, target, cfg.arch),
        student, teacher, iteration, {"kind": "reference", "variant": variant, "file": str(path)})


def convert_file(src: str | Path, dst: str | Path, variant: str | None = None,
                 trust_pickle: bool = False) -> dict[str, Any]:
    """Convert a reference file ``src`` into a project checkpoint at ``dst``; returns a summary."""
    obj = read_file(src, trust_pickle=trust_pickle, trust_hint=TRUST_HINT)
    if is_project_checkpoint(obj):
        raise CheckpointError(f"{src} is already a cordaseg checkpoint")
    payload = convert_reference(obj, src, variant)
    atomic_save(payload, dst)
    return {
        "variant": payload["source"]["variant"],
        "model_config": payload["model_config"],
        "tensors": len(payload["model"]),
        "teacher": "teacher" in payload,
        "iteration": payload.get("iteration"),
    }


def load_init_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor] | str | Path,
                      trust_pickle: bool = False) -> dict[str, list[str]]:
    """Load a DeepLab initialisation file (COCO or ImageNet), by path or as a dict, into the backbone
    only (:func:`cordaseg.models.convert.load_backbone_state`); returns ``{"loaded": [...],
    "skipped": [...]}``."""
    if isinstance(state, (str, Path)):
        path, state = state, read_file(state, trust_pickle=trust_pickle, trust_hint=TRUST_HINT)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a DeepLab initialisation state dict")
    return load_backbone_state(model, state)


def model_config_of(payload: dict[str, Any], path: str | Path = "<memory>") -> ModelConfig:
    try:
        return from_dict(ModelConfig, payload["model_config"], prefix="model_config")
    except (KeyError, ConfigError) as err:
        raise CheckpointError(f"{path}: bad model_config ({err})") from err


def load_model(path: str | Path, weights: str = "student", variant: str | None = None,
               trust_pickle: bool = False, map_location: str | torch.device = "cpu"
               ) -> tuple[CordaNet, ModelConfig]:
    """Any supported checkpoint -> (model in eval mode, its ModelConfig).

    ``weights`` picks the student (``"student"``, the default, what the paper evaluates) or the
    EMA teacher (``"teacher"``) of a training checkpoint.
    """
    if weights not in ("student", "teacher"):
        raise CheckpointError(f"weights must be 'student' or 'teacher', got {weights!r}")
    obj = read_file(path, trust_pickle=trust_pickle, trust_hint=TRUST_HINT)
    if is_project_checkpoint(obj):
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: format_version {version} is not supported (this is {FORMAT_VERSION})")
        payload = obj
    else:
        payload = convert_reference(obj, path, variant)
    cfg = model_config_of(payload, path)
    key = "model" if weights == "student" else "teacher"
    if key not in payload:
        raise CheckpointError(f"{path}: has no {weights} weights (keys: {', '.join(sorted(payload))})")
    model = CordaNet(cfg)  # not build_model: every weight comes from the file, cfg.pretrained is not read
    load_state(model, payload[key], path)
    model.to(map_location)
    return model.eval(), cfg


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path = "<memory>") -> None:
    """Strict load with a message that names the missing, unexpected or mis-shaped keys."""
    net = unwrap(model)
    target = net.state_dict()
    check_keys(state, target, [k for k in state if k not in target], what=f"{path}: weights")
    net.load_state_dict(state, strict=True)
