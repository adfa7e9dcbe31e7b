"""Vectorised ray casting of a street scene: depth, labels, normals, stereo.

Every pixel's ray is cast against the ground plane and every primitive of a
:class:`~cordaseg.world.scene.Scene`. The loop runs over primitives, never over pixels:
each primitive is projected to a screen rectangle first, and only the rays inside it are tested
(slab test for boxes, quadratic for spheres), so a frame costs a few numpy operations per
primitive plus work proportional to the area it covers.

Camera model: a pinhole at ``position`` pitched down by ``pitch`` radians about the x axis, with
pixel ``(u, v)`` (integer coordinates of pixel centres) looking along camera direction
``((u - cx) / fx, -(v - cy) / fy, 1)``. Ray parameters are expressed along that direction, whose
camera-z component is 1, so the hit parameter ``t`` *is* the metric depth ``Z`` (distance along
the optical axis), the quantity stereo measures: disparity ``= fx * baseline / Z``. The right view
of a stereo pair is the same camera moved by ``baseline`` along its x axis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cordaseg.world.scene import ROAD, SKY, TERRAIN, Scene

# Ground farther than this (metres) is drawn as sky: it is below the horizon haze anyway.
MAX_GROUND_DISTANCE = 400.0
_EPS = 1e-4


@dataclass(frozen=True)
class Camera:
    """A pinhole camera over the street; see the module docstring for the conventions."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    position: tuple[float, float, float]
    pitch: float  # radians, positive looks down
    baseline: float = 0.22  # metres, distance to the right camera of the stereo pair

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float, position, pitch_deg: float,
                 baseline: float = 0.22) -> Camera:
        fx = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
        return cls(width, height, float(fx), float(fx), (width - 1) / 2.0, (height - 1) / 2.0,
                   tuple(float(p) for p in position), float(np.radians(pitch_deg)), baseline)

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) camera -> world rotation (columns: camera x, y, z axes in the world)."""
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])

    def right(self) -> Camera:
        """The right camera of the stereo pair."""
        x, y, z = self.position
        return replace(self, position=(x + self.baseline, y, z))

    def ray_directions(self) -> np.ndarray:
        """(H, W, 3) world directions of the pixel rays, scaled so their camera-z is 1."""
        u = (np.arange(self.width) - self.cx) / self.fx
        v = -(np.arange(self.height) - self.cy) / self.fy
        cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1))), axis=-1)
        return cam @ self.rotation.T  # (H, W, 3)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates u, v and depth Z (camera z)."""
        cam = (np.asarray(points) - np.asarray(self.position)) @ self.rotation  # (..., 3)
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.cx + self.fx * cam[..., 0] / z
            v = self.cy - self.fy * cam[..., 1] / z
        return u, v, z


@dataclass
class GBuffer:
    """Per-pixel geometry of one rendered view."""

    depth: np.ndarray  # (H, W) float32 metric depth Z; inf where the ray sees sky
    primitive: np.ndarray  # (H, W) int32 primitive index; -1 ground, -2 sky
    normal: np.ndarray  # (H, W, 3) float32 unit surface normal (zero for sky)
    point: np.ndarray  # (H, W, 3) float32 world hit point (undefined for sky)
    label: np.ndarray  # (H, W) uint8 Cityscapes label IDs
    camera: Camera


def _screen_rects(scene: Scene, camera: Camera) -> np.ndarray:
    """(N + K, 4) int pixel rectangles [u0, u1, v0, v1) that bound each primitive's projection."""
    lo = np.concatenate([scene.box_min, scene.sphere_center - scene.sphere_radius[:, None]])
    hi = np.concatenate([scene.box_max, scene.sphere_center + scene.sphere_radius[:, None]])
    corners = np.stack(
        [np.stack([(lo, hi)[i][:, 0], (lo, hi)[j][:, 1], (lo, hi)[k][:, 2]], axis=-1)
         for i in (0, 1) for j in (0, 1) for k in (0, 1)], axis=1)  # (P, 8, 3)
    u, v, z = camera.project(corners)
    rects = np.empty((len(lo), 4), dtype=np.int64)
    rects[:, 0] = np.floor(u.min(1)) - 1
    rects[:, 1] = np.ceil(u.max(1)) + 2
    rects[:, 2] = np.floor(v.min(1)) - 1
    rects[:, 3] = np.ceil(v.max(1)) + 2
    # A primitive reaching behind the camera plane projects unboundedly: test every ray.
    crossing = z.min(1) <= 0.05
    rects[crossing] = (0, camera.width, 0, camera.height)
    behind = z.max(1) <= 0.05
    rects[behind] = 0
    rects[:, :2] = rects[:, :2].clip(0, camera.width)
    rects[:, 2:] = rects[:, 2:].clip(0, camera.height)
    return rects


def _inverse_planes(vectors: np.ndarray) -> list[np.ndarray]:
    """(H, W, 3) directions -> three contiguous (H, W) planes of 1 / component (zeros nudged)."""
    planes = []
    for axis in range(3):
        component = vectors[..., axis]
        component = np.where(component == 0, 1e-12, component)
        planes.append(np.ascontiguousarray(1.0 / component))
    return planes


def _slab(origin, inv: list[np.ndarray], lo: np.ndarray, hi: np.ndarray):
    """Slab test of rays ``origin + t * d`` (given as 1/d planes) against box [lo, hi].

    Returns the per-axis entry parameters, the entry ``t_near`` and the exit ``t_far``; a ray hits
    where ``t_near <= t_far``. ``origin`` is one point or (h, w) planes per axis.
    """
    near, far = [], []
    for axis in range(3):
        a = (lo[axis] - origin[axis]) * inv[axis]
        b = (hi[axis] - origin[axis]) * inv[axis]
        near.append(np.minimum(a, b))
        far.append(np.maximum(a, b))
    t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
    t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
    return near, t_near, t_far


def cast_rays(scene: Scene, camera: Camera) -> GBuffer:
    """Render the geometry of ``scene`` seen by ``camera`` (nearest hit per pixel)."""
    h, w = camera.height, camera.width
    origin = np.asarray(camera.position)
    dirs = camera.ray_directions()  # (H, W, 3)
    # One contiguous (H, W) plane per axis: reductions over a length-3 last axis are slow in numpy.
    inv = _inverse_planes(dirs)

    # Ground plane y = 0 (road and terrain); beyond MAX_GROUND_DISTANCE it is sky.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[..., 1] < 0, -origin[1] / dirs[..., 1], np.inf)
    ground = t_ground < MAX_GROUND_DISTANCE
    depth = np.where(ground, t_ground, np.inf)
    primitive = np.where(ground, -1, -2).astype(np.int32)
    face = np.zeros((h, w), dtype=np.int8)  # box face: 1 + axis, signed by the normal's sign

    rects = _screen_rects(scene, camera)
    nb = scene.num_boxes
    for i in range(nb):
        u0, u1, v0, v1 = rects[i]
        if u0 >= u1 or v0 >= v1:
            continue
        near, t_near, t_far = _slab(origin, [plane[v0:v1, u0:u1] for plane in inv],
                                    scene.box_min[i], scene.box_max[i])
        sub_depth = depth[v0:v1, u0:u1]
        hit = (t_near <= t_far) & (t_near > _EPS) & (t_near < sub_depth)
        if not hit.any():
            continue
        t_hit = t_near[hit]
        axis = np.where(near[0][hit] == t_hit, 0, np.where(near[1][hit] == t_hit, 1, 2))
        direction = dirs[v0:v1, u0:u1][hit]
        sign = np.where(np.take_along_axis(direction, axis[:, None], -1)[:, 0] > 0, -1, 1)
        sub_depth[hit] = t_hit
        primitive[v0:v1, u0:u1][hit] = i
        face[v0:v1, u0:u1][hit] = (sign * (axis + 1)).astype(np.int8)

    for k in range(len(scene.sphere_radius)):
        u0, u1, v0, v1 = rects[nb + k]
        if u0 >= u1 or v0 >= v1:
            continue
        d = dirs[v0:v1, u0:u1]
        oc = origin - scene.sphere_center[k]
        a = np.einsum("hwc,hwc->hw", d, d)
        half_b = d @ oc
        c = oc @ oc - scene.sphere_radius[k] ** 2
        disc = half_b * half_b - a * c
        with np.errstate(invalid="ignore"):
            t = (-half_b - np.sqrt(disc)) / a
        sub_depth = depth[v0:v1, u0:u1]
        hit = (disc >= 0) & (t > _EPS) & (t < sub_depth)
        sub_depth[hit] = t[hit]
        primitive[v0:v1, u0:u1][hit] = nb + k

    sky = primitive == -2
    point = (origin + np.where(sky, 0.0, depth)[..., None] * dirs).astype(np.float32)
    normal = np.zeros((h, w, 3), dtype=np.float32)
    normal[primitive == -1] = (0.0, 1.0, 0.0)
    boxes = (primitive >= 0) & (primitive < nb)
    axis = np.abs(face[boxes]).astype(np.int64) - 1
    normal[boxes, axis] = np.sign(face[boxes])
    spheres = primitive >= nb
    if spheres.any():
        k = primitive[spheres] - nb
        n = point[spheres] - scene.sphere_center[k]
        normal[spheres] = n / scene.sphere_radius[k][:, None]

    label = np.full((h, w), SKY, dtype=np.uint8)
    on_ground = primitive == -1
    label[on_ground] = np.where(np.abs(point[on_ground][:, 0]) <= scene.road_half_width, ROAD, TERRAIN)
    objects = primitive >= 0
    label[objects] = scene.label[primitive[objects]]
    return GBuffer(depth.astype(np.float32), primitive, normal, point, label, camera)


def shadow_mask(scene: Scene, gbuffer: GBuffer, sun: np.ndarray, casters: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose hit point cannot see the sun because a caster box is in the way.

    ``sun`` is the unit direction towards the sun (y > 0); ``casters`` the box indices that cast
    shadows. Each caster is tested only on the pixels inside the screen rectangle of the box swept
    along the sun direction down to the ground, again a loop over primitives, not pixels.
    """
    h, w = gbuffer.depth.shape
    shadow = np.zeros((h, w), dtype=bool)
    camera = gbuffer.camera
    sun = np.asarray(sun, dtype=np.float64)
    inv = [1.0 / (c if c != 0 else 1e-12) for c in sun]
    point = [np.ascontiguousarray(gbuffer.point[..., axis]) for axis in range(3)]
    valid = gbuffer.primitive != -2
    for i in casters:
        lo, hi = scene.box_min[i], scene.box_max[i]
        # The shadow on the ground reaches as far as the top corners sliding down the sun ray.
        drop = hi[1] / sun[1] * sun
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        u, v, zc = camera.project(np.concatenate([corners, corners - drop]))
        if zc.max() <= 0.05:
            continue
        if zc.min() <= 0.05:
            u0, u1, v0, v1 = 0, w, 0, h
        else:
            u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, w)
            v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, h)
        if u0 >= u1 or v0 >= v1:
            continue
        _, t_near, t_far = _slab([p[v0:v1, u0:u1] for p in point], inv, lo, hi)
        blocked = (t_near <= t_far) & (t_far > 1e-3) & valid[v0:v1, u0:u1]
        blocked &= gbuffer.primitive[v0:v1, u0:u1] != i
        shadow[v0:v1, u0:u1] |= blocked
    return shadow
