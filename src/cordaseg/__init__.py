"""cordaseg: domain-adaptive semantic segmentation guided by self-supervised depth (CorDA).

The small public API::

    model = cordaseg.build_model(cordaseg.ModelConfig(backbone_depth=101))
    model, cfg = cordaseg.load_model("corda_gta.pth")   # ours or the reference's, eval mode
    out = model(images)                                 # CordaOutput(semantic=..., depth=..., ...)
"""

from cordaseg.config import ConfigError
from cordaseg.errors import CheckpointError, CordasegError, DataError
from cordaseg.models.checkpoint import convert_file, load_init_weights, load_model
from cordaseg.models.corda import CordaNet, ModelConfig, build_model, param_groups
from cordaseg.models.output import CordaOutput

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "CordaNet",
    "CordaOutput",
    "CordasegError",
    "DataError",
    "ModelConfig",
    "build_model",
    "convert_file",
    "load_init_weights",
    "load_model",
    "param_groups",
]
