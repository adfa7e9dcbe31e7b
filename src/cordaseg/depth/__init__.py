"""Depth for CorDA (Wang et al., ICCV 2021; Monodepth2, Godard et al., ICCV 2019): Monodepth2-style
networks, losses and trainer, pretrained depth models of ``transformers``, and the export of depth
files in the encodings CorDA reads (README, "Datasets")."""

from cordaseg.depth.export import (
    EXPORT_FORMATS,
    encode_depth,
    export_depth,
    export_pretrained_depth,
    read_depth_file,
    write_depth_file,
)
from cordaseg.depth.network import DepthModelConfig, DepthNetwork, PoseNetwork, disparity_to_depth
from cordaseg.depth.trainer import DepthTrainConfig, depth_step, load_depth_checkpoint, train_depth

__all__ = [
    "EXPORT_FORMATS", "DepthModelConfig", "DepthNetwork", "DepthTrainConfig", "PoseNetwork", "depth_step",
    "disparity_to_depth", "encode_depth", "export_depth", "export_pretrained_depth", "load_depth_checkpoint",
    "read_depth_file", "train_depth", "write_depth_file",
]
