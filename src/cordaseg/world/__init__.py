"""The synthetic street world (README, "The synthetic street world"): a procedural street scene generator with two domains,
rendered by vectorised ray casting and written as GTA5 (source) and Cityscapes (target) trees."""

from cordaseg.world.domains import SOURCE, TARGET, Domain, Frame, render_frame, target_domain
from cordaseg.world.export import WorldConfig, generate_world, generate_world_from_config, stereo_depth
from cordaseg.world.render import Camera, GBuffer, cast_rays
from cordaseg.world.scene import Scene, SceneParams, sample_scene

__all__ = [
    "SOURCE", "TARGET", "Camera", "Domain", "Frame", "GBuffer", "Scene", "SceneParams", "WorldConfig",
    "cast_rays", "generate_world", "generate_world_from_config", "render_frame", "sample_scene",
    "stereo_depth", "target_domain",
]
