"""The two domains of the synthetic street world: appearance, camera, frequencies.

Both domains draw streets from the same grammar (:mod:`cordaseg.world.scene`) and differ in
everything a real synthetic-to-real gap differs in:

- **source** ("synthetic", written as a GTA5 tree): clean flat-shaded saturated materials, a
  strong sun with hard shadows, a clear blue sky, a wide field of view from a high camera, many
  cars and buildings, few people and trees;
- **target** ("real-looking", written as a Cityscapes tree): other materials (textured asphalt,
  paving tiles, dull paint, dark foliage), overcast light (or, in 30% of frames, dusk) without
  hard shadows, fog that grows with distance, sensor noise, blur, vignetting, a colour cast, a
  lower camera with more pitch and a narrower field of view, more people, riders and vegetation.

``shift`` in [0, 1] (values above 1 exaggerate) interpolates every numeric parameter from the
source's (0: no gap at all) to the target's (1: the full gap), so the strength of the shift is
one number. Randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np

from cordaseg.world.render import Camera, GBuffer, cast_rays, shadow_mask
from cordaseg.world.scene import MATERIALS, ROAD, Scene, SceneParams, sample_scene
from cordaseg.world.scene import M as MAT


def _palette(**colours: tuple[float, float, float]) -> tuple[tuple[float, float, float], ...]:
    return tuple(colours[name] for name in MATERIALS)


@dataclass
class CameraParams:
    """Where the camera sits and how wide it sees."""

    hfov_deg: float = 80.0  # horizontal field of view
    height_m: float = 1.6  # above the road
    pitch_deg: float = 2.0  # down from the horizon
    jitter: float = 1.0  # per-frame jitter: +-0.1 m of height and +-1 degree of pitch, times this


@dataclass
class Appearance:
    """How surfaces, light, atmosphere and the sensor look in one domain."""

    palette: tuple[tuple[float, float, float], ...]  # base RGB in [0, 1] per material (scene.MATERIALS)
    tint_variation: tuple[float, ...]  # per material: how far instances vary from the base colour
    texture: tuple[float, ...]  # per material: amplitude of the value-noise texture
    saturation: float = 1.0  # 1 keeps colours, < 1 washes them out
    sun_elevation_deg: float = 45.0  # direction of the light (azimuth is random per frame)
    ambient: float = 0.4  # light that reaches everything
    diffuse: float = 0.7  # directional (sun) light
    shadow: float = 0.6  # how much a hard shadow removes of the directional light; 0 = no shadows
    sky_top: tuple[float, float, float] = (0.30, 0.55, 1.0)
    sky_horizon: tuple[float, float, float] = (0.75, 0.88, 1.0)
    clouds: float = 0.0  # amplitude of cloud texture in the sky
    fog_density: float = 0.0  # per metre; visibility ~ 3 / density
    fog_colour: tuple[float, float, float] = (0.8, 0.85, 0.9)
    tiles: float = 0.0  # strength of the paving-tile pattern on sidewalks
    lane_paint: float = 1.0  # brightness of lane markings
    contrast: float = 1.0
    colour_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast of the sensor
    vignetting: float = 0.0  # darkening at the image corners
    blur_px: float = 0.0  # Gaussian blur sigma at 256 px width (scaled with the width)
    noise: float = 0.0  # sensor noise sigma, in [0, 1] intensity units
    exposure_jitter: float = 0.05  # per-frame brightness jitter
    dusk: float = 0.0  # probability that a frame is lit at dusk instead (see DUSK)


@dataclass
class Domain:
    """One domain: the grammar's frequencies, the camera and the appearance."""

    name: str
    scene: SceneParams = field(default_factory=SceneParams)
    camera: CameraParams = field(default_factory=CameraParams)
    appearance: Appearance | None = None


_N = len(MATERIALS)


def _per_material(default: float, **values: float) -> tuple[float, ...]:
    return tuple(values.get(name, default) for name in MATERIALS)


SOURCE = Domain(
    name="source",
    scene=SceneParams(cars=18.0, trucks=2.0, buses=1.5, people=6.0, riders=3.0, trees=5.0, hedges=2.0,
                      grass_patches=2.0, building_gap=0.12, building_height_max=34.0, tram=0.35),
    camera=CameraParams(hfov_deg=80.0, height_m=1.6, pitch_deg=1.5),
    appearance=Appearance(
        palette=_palette(
            road=(0.33, 0.33, 0.37), sidewalk=(0.80, 0.72, 0.66), terrain=(0.35, 0.80, 0.22),
            building=(0.80, 0.55, 0.40), wall=(0.90, 0.82, 0.55), fence=(0.65, 0.45, 0.28),
            pole=(0.55, 0.57, 0.65), light=(0.15, 0.15, 0.08), sign=(0.10, 0.35, 0.95),
            foliage=(0.18, 0.72, 0.10), trunk=(0.50, 0.30, 0.12), skin=(0.95, 0.75, 0.60),
            clothes=(0.50, 0.30, 0.55), paint=(0.75, 0.15, 0.15), glass=(0.20, 0.30, 0.55),
            frame=(0.85, 0.85, 0.90), tyre=(0.07, 0.07, 0.07), sky=(0.30, 0.55, 1.0),
        ),
        tint_variation=_per_material(0.1, building=0.5, paint=1.0, clothes=1.0, sign=0.6, frame=0.4, wall=0.3),
        texture=_per_material(0.02),
        saturation=1.25, sun_elevation_deg=40.0, ambient=0.38, diffuse=0.75, shadow=0.6,
        fog_density=0.002, fog_colour=(0.75, 0.85, 1.0),
    ),
)

TARGET = Domain(
    name="target",
    scene=SceneParams(cars=10.0, trucks=1.0, buses=0.7, people=16.0, riders=6.0, trees=12.0, hedges=5.0,
                      grass_patches=5.0, building_gap=0.28, building_height_max=22.0, verge_max=5.0, tram=0.3,
                      parked_bikes=4.0),
    camera=CameraParams(hfov_deg=62.0, height_m=1.25, pitch_deg=5.0),
    appearance=Appearance(
        palette=_palette(
            road=(0.36, 0.36, 0.37), sidewalk=(0.62, 0.60, 0.58), terrain=(0.50, 0.55, 0.28),
            building=(0.62, 0.52, 0.42), wall=(0.70, 0.66, 0.60), fence=(0.42, 0.38, 0.30),
            pole=(0.35, 0.36, 0.38), light=(0.12, 0.12, 0.12), sign=(0.75, 0.75, 0.78),
            foliage=(0.25, 0.38, 0.14), trunk=(0.32, 0.25, 0.18), skin=(0.72, 0.56, 0.46),
            clothes=(0.28, 0.26, 0.30), paint=(0.50, 0.50, 0.52), glass=(0.22, 0.25, 0.28),
            frame=(0.30, 0.30, 0.32), tyre=(0.08, 0.08, 0.08), sky=(0.80, 0.82, 0.85),
        ),
        tint_variation=_per_material(0.1, building=0.45, paint=0.8, clothes=0.5, sign=0.5, terrain=0.2),
        texture=_per_material(0.12, road=0.16, sidewalk=0.1, foliage=0.3, terrain=0.25, glass=0.08),
        saturation=0.75, sun_elevation_deg=15.0, ambient=0.72, diffuse=0.25, shadow=0.0,
        sky_top=(0.72, 0.74, 0.78), sky_horizon=(0.86, 0.86, 0.86), clouds=0.08,
        fog_density=0.01, fog_colour=(0.78, 0.78, 0.80), tiles=0.25, lane_paint=0.7,
        contrast=0.9, colour_gain=(1.06, 0.98, 0.86), vignetting=0.35, blur_px=0.7, noise=0.02, dusk=0.3,
    ),
)


def _lerp(a, b, t: float):
    """Interpolate two values (or dataclass trees) of the same kind; ``t`` = 0 gives ``a``."""
    if dataclasses.is_dataclass(a):
        return type(a)(**{f.name: _lerp(getattr(a, f.name), getattr(b, f.name), t) for f in dataclasses.fields(a)})
    if isinstance(a, tuple):
        return tuple(_lerp(x, y, t) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(a, str):
        return a if t < 0.5 else b
    if isinstance(a, int):
        return int(round(a + (b - a) * t))
    return max(a + (b - a) * t, 0.0) if isinstance(a, float) and a >= 0 and b >= 0 else a + (b - a) * t


def target_domain(shift: float = 1.0) -> Domain:
    """The target domain at gap strength ``shift`` (0: identical to the source, 1: the full gap)."""
    if not np.isfinite(shift) or shift < 0:
        raise ValueError(f"shift must be a finite number >= 0, got {shift}")
    domain = _lerp(SOURCE, TARGET, float(shift))
    domain.name = "target"
    return domain


@dataclass
class Frame:
    """One rendered frame of a domain; ``right_*`` only for stereo frames."""

    rgb: np.ndarray  # (H, W, 3) uint8
    label_ids: np.ndarray  # (H, W) uint8 Cityscapes label IDs
    depth: np.ndarray  # (H, W) float32 metric depth Z in metres; inf in the sky
    camera: Camera
    right_rgb: np.ndarray | None = None
    right_depth: np.ndarray | None = None
    right_label_ids: np.ndarray | None = None


def _value_noise(a: np.ndarray, b: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Blocky value noise in [-0.5, 0.5) from integer hashing of grid cells (vectorised)."""
    i = np.floor(a * scale).astype(np.int64)
    j = np.floor(b * scale).astype(np.int64)
    h = (i * 73856093) ^ (j * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF).astype(np.float32) / 65536.0 - 0.5


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def shade(scene: Scene, gb: GBuffer, look: Appearance, sun: np.ndarray, seed: int,
          rng: np.random.Generator, exposure: float) -> np.ndarray:
    """GBuffer -> (H, W, 3) uint8 RGB in the domain's appearance: surface colours lit by the sun,
    the sky and fog, then the sensor (``rng`` draws only the sensor noise)."""
    rgb = _albedo(scene, gb, look, seed) * _light(scene, gb, look, sun)[..., None]  # (H, W, 3)
    rgb = _sky_and_fog(rgb, gb, look, seed)
    return _sensor(rgb, look, rng, exposure)


def _albedo(scene: Scene, gb: GBuffer, look: Appearance, seed: int) -> np.ndarray:
    """(H, W, 3) surface colour: the material's base colour per primitive, the patterns of road,
    facades, fences and paving, and value-noise texture."""
    h, w = gb.depth.shape
    palette = np.asarray(look.palette, dtype=np.float32)  # (materials, 3)
    variation = np.asarray(look.tint_variation, dtype=np.float32)
    texture = np.asarray(look.texture, dtype=np.float32)
    # Per-primitive colour: base + variation * (tint - 0.5), then the domain's saturation.
    colours = palette[scene.material] + variation[scene.material, None] * (scene.tint - 0.5)  # (P, 3)
    grey = colours.mean(-1, keepdims=True)
    colours = np.clip(grey + look.saturation * (colours - grey), 0.0, 1.0)

    prim = gb.primitive
    ground = prim == -1
    objects = prim >= 0
    label = gb.label
    material = np.full((h, w), MAT["sky"], dtype=np.int64)
    material[ground] = np.where(label[ground] == ROAD, MAT["road"], MAT["terrain"])
    material[objects] = scene.material[prim[objects]]
    albedo = np.zeros((h, w, 3), dtype=np.float32)
    albedo[ground] = palette[material[ground]]
    albedo[objects] = colours[prim[objects]]
    p = gb.point
    px, py, pz = p[..., 0], p[..., 1], p[..., 2]

    # Patterns that a class's appearance carries in both domains.
    road = ground & (label == ROAD)
    dash = (_frac(pz / 9.0) < 0.35)[..., None]
    for x_line in scene.lane_lines:
        paint = road & (np.abs(px - x_line) < 0.08) & dash[..., 0]
        albedo[paint] = look.lane_paint * 0.9
    edge = road & (np.abs(np.abs(px) - (scene.road_half_width - 0.25)) < 0.07)
    albedo[edge] = look.lane_paint * 0.85
    facade = (material == MAT["building"]) & (np.abs(gb.normal[..., 1]) < 0.5)
    if facade.any():
        t = scene.tint[prim[facade]]
        along = np.where(np.abs(gb.normal[facade][:, 0]) > 0.5, pz[facade], px[facade])
        cell, floor = 2.2 + 1.8 * t[:, 0], 3.0 + 0.6 * t[:, 1]
        win = ((np.abs(_frac(along / cell) - 0.5) < 0.2 + 0.1 * t[:, 2])
               & (np.abs(_frac(py[facade] / floor) - 0.55) < 0.22) & (py[facade] > 2.5))
        glass = palette[MAT["glass"]] * (0.7 + 0.6 * t[:, 2:3])
        albedo[facade] = np.where(win[:, None], glass, albedo[facade])
    fence = material == MAT["fence"]
    albedo[fence] *= np.where(_frac(pz[fence] / 0.2) < 0.4, 0.55, 1.0)[:, None]
    if look.tiles > 0:
        walk = (material == MAT["sidewalk"]) & (gb.normal[..., 1] > 0.5)
        grout = (_frac(px[walk] / 0.6) < 0.08) | (_frac(pz[walk] / 0.6) < 0.08)
        albedo[walk] *= (1.0 - look.tiles * grout)[:, None]

    # Texture: value noise at two scales, amplitude per material.
    a, b = px + pz, py + 0.37 * pz
    noise = _value_noise(a, b, 4.0, seed) + 0.5 * _value_noise(a, b, 13.0, seed + 1)
    albedo *= (1.0 + 2.0 * texture[material] * noise)[..., None]
    return albedo


def _light(scene: Scene, gb: GBuffer, look: Appearance, sun: np.ndarray) -> np.ndarray:
    """(H, W) light reaching each pixel."""
    # Light: ambient + Lambert sun, minus hard shadows.
    lambert = np.clip(gb.normal @ sun.astype(np.float32), 0.0, 1.0)
    if look.shadow > 0:
        casters = np.flatnonzero(scene.box_max[:, 1] > 0.5)
        lambert *= 1.0 - look.shadow * shadow_mask(scene, gb, sun, casters)
    return look.ambient + look.diffuse * lambert


def _sky_and_fog(rgb: np.ndarray, gb: GBuffer, look: Appearance, seed: int) -> np.ndarray:
    """The sky's pixels painted, then fog over everything by distance."""
    sky = gb.primitive == -2
    # Sky: a vertical gradient, clouds; then fog with distance (the sky is all fog colour far away).
    dirs = gb.camera.ray_directions()
    elevation = dirs[..., 1] / np.linalg.norm(dirs, axis=-1)
    mix = np.clip(elevation * 3.0, 0.0, 1.0)[..., None]
    sky_rgb = (1 - mix) * np.asarray(look.sky_horizon) + mix * np.asarray(look.sky_top)
    if look.clouds > 0:
        cu = dirs[..., 0] / np.maximum(dirs[..., 1], 0.05)
        cv = dirs[..., 2] / np.maximum(dirs[..., 1], 0.05)
        sky_rgb = sky_rgb + look.clouds * (_value_noise(cu, cv, 1.5, seed + 2) + 0.5
                                           * _value_noise(cu, cv, 5.0, seed + 3))[..., None]
    rgb[sky] = sky_rgb[sky]
    if look.fog_density > 0:
        distance = np.where(sky, 1e4, gb.depth * np.linalg.norm(dirs, axis=-1))
        keep = np.exp(-look.fog_density * distance)[..., None]
        rgb = keep * rgb + (1 - keep) * np.asarray(look.fog_colour, dtype=np.float32)
    return rgb


def _sensor(rgb: np.ndarray, look: Appearance, rng: np.random.Generator, exposure: float) -> np.ndarray:
    """Exposure, contrast, colour cast, vignetting, blur and noise, then 8-bit values."""
    h, w = rgb.shape[:2]
    # The sensor: exposure, contrast, colour cast, vignetting, blur, noise.
    rgb = rgb * exposure
    rgb = (rgb - 0.5) * look.contrast + 0.5
    rgb = rgb * np.asarray(look.colour_gain, dtype=np.float32)
    if look.vignetting > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (w / 2)) ** 2
        rgb *= (1.0 - look.vignetting * r2 / 1.25)[..., None]
    if look.blur_px > 0:
        sigma = look.blur_px * w / 256.0
        rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    if look.noise > 0:
        rgb = rgb + rng.normal(0.0, look.noise, size=rgb.shape).astype(np.float32)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def sample_camera(domain: Domain, width: int, height: int, scene: Scene, rng: np.random.Generator) -> Camera:
    """The domain's camera over the scene's camera lane, with per-frame jitter."""
    cam = domain.camera
    h = cam.height_m + cam.jitter * rng.uniform(-0.1, 0.1)
    pitch = cam.pitch_deg + cam.jitter * rng.uniform(-1.0, 1.0)
    return Camera.from_fov(width, height, cam.hfov_deg, (scene.camera_x, h, 0.0), pitch)


# What dusk changes in a frame's appearance: a low warm sun, an orange horizon, less light.
DUSK = {"sun_elevation_deg": 6.0, "ambient": 0.45, "diffuse": 0.45, "sky_top": (0.35, 0.38, 0.55),
        "sky_horizon": (0.95, 0.62, 0.38), "fog_colour": (0.70, 0.55, 0.45), "colour_gain": (1.15, 0.93, 0.72)}


def render_frame(domain: Domain, size: tuple[int, int], rng: np.random.Generator, stereo: bool = False) -> Frame:
    """Draw a street and render it in ``domain``'s look at ``size`` = (W, H); ``stereo`` adds the right view."""
    width, height = size
    scene = sample_scene(domain.scene, rng)
    camera = sample_camera(domain, width, height, scene, rng)
    look = domain.appearance
    if rng.random() < look.dusk:
        look = dataclasses.replace(look, **DUSK)
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    elevation = np.radians(look.sun_elevation_deg + rng.uniform(-8.0, 8.0))
    sun = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)])
    seed = int(rng.integers(2**31))
    exposure = 1.0 + look.exposure_jitter * rng.uniform(-1.0, 1.0)
    left = cast_rays(scene, camera)
    frame = Frame(shade(scene, left, look, sun, seed, rng, exposure), left.label, left.depth, camera)
    if stereo:
        right = cast_rays(scene, camera.right())
        frame.right_rgb = shade(scene, right, look, sun, seed, rng, exposure)
        frame.right_depth = right.depth
        frame.right_label_ids = right.label
    return frame


