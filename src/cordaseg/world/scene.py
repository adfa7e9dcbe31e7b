"""The scene grammar of the synthetic street world: random street layouts.

A scene is a straight street seen from a car: a road with lanes and markings, raised sidewalks
with kerbs, grass verges, building façades of varying height and setback, walls, fences, hedges,
trees, poles carrying traffic lights and signs, parked and moving cars, trucks, buses, sometimes a
tram, people, and riders on bicycles and motorcycles. Everything is made of axis-aligned boxes and
spheres over the ground plane ``y = 0``, so :mod:`cordaseg.world.render` can ray-cast it with a
few vectorised numpy operations per primitive.

World coordinates are metres: ``x`` to the right, ``y`` up, ``z`` forward along the street. Each
primitive carries a Cityscapes label ID (docs/data-formats.md, "Labels"), a material (how a domain paints it) and a
random tint (per-instance colour variation). How often each kind of object appears is a parameter
(:class:`SceneParams`), which is one of the ways the two domains differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cityscapes label IDs (docs/data-formats.md, "Labels") of the classes the world draws.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 7, 8, 11, 12, 13, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33

# Materials: what a domain's appearance paints a surface with (colour, texture, pattern).
MATERIALS = (
    "road", "sidewalk", "terrain", "building", "wall", "fence", "pole", "light", "sign",
    "foliage", "trunk", "skin", "clothes", "paint", "glass", "frame", "tyre", "sky",
)
M = {name: index for index, name in enumerate(MATERIALS)}


@dataclass
class SceneParams:
    """The scene grammar's knobs; counts are expected numbers per 100 m of street."""

    lanes_min: int = 2
    """Fewest lanes of the road."""
    lanes_max: int = 4
    """Most lanes of the road."""
    lane_width: float = 3.2
    """Width of one lane, metres."""
    sidewalk_min: float = 1.8
    """Narrowest sidewalk, metres."""
    sidewalk_max: float = 4.5
    """Widest sidewalk, metres."""
    verge_max: float = 4.0
    """Widest grass verge (terrain) between sidewalk and buildings, metres."""
    building_height_min: float = 6.0
    """Lowest building, metres."""
    building_height_max: float = 30.0
    """Tallest building, metres."""
    building_gap: float = 0.2
    """Probability that a plot along the street has no building (a gap, a side street)."""
    cars: float = 14.0
    """Cars, parked and moving."""
    trucks: float = 1.5
    """Trucks."""
    buses: float = 1.0
    """Buses."""
    tram: float = 0.3
    """Probability that a tram (Cityscapes "train") runs down the middle of the road."""
    people: float = 12.0
    """Pedestrians, on sidewalks and crossing."""
    riders: float = 4.0
    """Riders on bicycles or motorcycles."""
    parked_bikes: float = 2.0
    """Bicycles and motorcycles standing on the sidewalk."""
    poles: float = 8.0
    """Poles along the kerbs."""
    traffic_lights: float = 0.4
    """Fraction of poles that carry a traffic light."""
    signs: float = 0.5
    """Fraction of poles that carry a sign."""
    trees: float = 8.0
    """Trees on the verges and sidewalks."""
    hedges: float = 3.0
    """Hedges (low vegetation)."""
    walls: float = 2.5
    """Walls in front of plots."""
    fences: float = 2.5
    """Fences in front of plots."""
    grass_patches: float = 3.0
    """Grass patches (terrain) on the sidewalks."""


# Length of street that gets objects, metres; the road and façades go on further.
STREET_LENGTH = 100.0


@dataclass
class Scene:
    """A street as arrays of primitives: ``box_*`` (N boxes) then ``sphere_*`` (K spheres).

    Primitive ``i`` is box ``i`` for ``i < N`` and sphere ``i - N`` otherwise; ``label``,
    ``material`` and ``tint`` cover all N + K primitives in that order.
    """

    box_min: np.ndarray  # (N, 3) lower corners
    box_max: np.ndarray  # (N, 3) upper corners
    sphere_center: np.ndarray  # (K, 3)
    sphere_radius: np.ndarray  # (K,)
    label: np.ndarray  # (N + K,) uint8 Cityscapes label IDs
    material: np.ndarray  # (N + K,) int64 indices into MATERIALS
    tint: np.ndarray  # (N + K, 3) float32 in [0, 1): per-instance colour variation
    road_half_width: float
    lane_lines: np.ndarray  # x of the dashed lines between lanes
    camera_x: float  # lateral position of the camera: the middle of a lane

    @property
    def num_boxes(self) -> int:
        return len(self.box_min)


class _Builder:
    """Collects primitives while the grammar places them."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.boxes: list[tuple[float, ...]] = []
        self.box_meta: list[tuple[int, int]] = []
        self.spheres: list[tuple[float, ...]] = []
        self.sphere_meta: list[tuple[int, int]] = []

    def box(self, x0, x1, y0, y1, z0, z1, label: int, material: str) -> None:
        self.boxes.append((min(x0, x1), min(y0, y1), min(z0, z1), max(x0, x1), max(y0, y1), max(z0, z1)))
        self.box_meta.append((label, M[material]))

    def sphere(self, x, y, z, r, label: int, material: str) -> None:
        self.spheres.append((x, y, z, r))
        self.sphere_meta.append((label, M[material]))

    def person(self, x: float, z: float, label: int = PERSON, base: float = 0.0) -> None:
        """A standing (or, with ``base`` > 0, seated) figure: legs, torso, head."""
        s = self.rng.uniform(0.88, 1.1)
        if base == 0.0:
            self.box(x - 0.17, x + 0.17, 0.0, 0.85 * s, z - 0.12, z + 0.12, label, "clothes")
        else:  # legs hang on both sides of the bike
            self.box(x - 0.2, x + 0.2, base - 0.5, base, z - 0.15, z + 0.15, label, "clothes")
        top = max(base, 0.85 * s)
        self.box(x - 0.22, x + 0.22, top, top + 0.62 * s, z - 0.13, z + 0.13, label, "clothes")
        self.sphere(x, top + 0.62 * s + 0.13, z, 0.12 * s, label, "skin")

    def build(self, road_half_width: float, lane_lines: np.ndarray, camera_x: float) -> Scene:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 6)
        spheres = np.asarray(self.spheres, dtype=np.float64).reshape(-1, 4)
        meta = np.asarray(self.box_meta + self.sphere_meta, dtype=np.int64).reshape(-1, 2)
        return Scene(
            box_min=boxes[:, :3].copy(), box_max=boxes[:, 3:].copy(),
            sphere_center=spheres[:, :3].copy(), sphere_radius=spheres[:, 3].copy(),
            label=meta[:, 0].astype(np.uint8), material=meta[:, 1],
            tint=self.rng.random((len(meta), 3), dtype=np.float32),
            road_half_width=road_half_width, lane_lines=lane_lines, camera_x=camera_x,
        )


def _count(rng: np.random.Generator, per_100m: float) -> int:
    return int(rng.poisson(max(per_100m, 0.0) * STREET_LENGTH / 100.0))


@dataclass
class _Street:
    """The street's cross-section, which every object is placed against."""

    half: float  # x of the kerbs: half the road's width
    lane_centres: np.ndarray  # x of the middle of each lane
    camera_x: float  # the camera's lane
    sides: dict[float, tuple[float, float, float]]  # side (-1, 1) -> (sidewalk width, kerb height, verge width)


def sample_scene(params: SceneParams, rng: np.random.Generator) -> Scene:
    """Draw one random street layout from the grammar: the road, sidewalks and buildings, then
    what stands along and on the street, in a fixed order of draws from ``rng``."""
    b = _Builder(rng)
    street = _road_and_buildings(params, b)
    _verges(params, b, street)
    _trees_and_poles(params, b, street)
    _vehicles(params, b, street)
    _people(params, b, street)
    lane_lines = -street.half + params.lane_width * np.arange(1, len(street.lane_centres))
    return b.build(street.half, lane_lines, street.camera_x)


def _road_and_buildings(params: SceneParams, b: _Builder) -> _Street:
    """The lanes and the camera's lane, then per side the raised sidewalk and the building line."""
    rng = b.rng
    lanes = int(rng.integers(params.lanes_min, params.lanes_max + 1))
    half = lanes * params.lane_width / 2.0
    lane_centres = -half + params.lane_width * (np.arange(lanes) + 0.5)
    camera_lane = int(rng.integers(lanes))
    camera_x = float(lane_centres[camera_lane])
    far = STREET_LENGTH + 150.0

    # Sidewalks (raised by the kerb) and what stands behind them, per side.
    sides = {}
    for side in (-1.0, 1.0):
        walk = rng.uniform(params.sidewalk_min, params.sidewalk_max)
        kerb = rng.uniform(0.12, 0.18)
        verge = rng.uniform(0.0, params.verge_max) if rng.random() < 0.6 else 0.0
        inner, outer = half, half + walk
        b.box(side * inner, side * outer, 0.0, kerb, -5.0, far, SIDEWALK, "sidewalk")
        sides[side] = (walk, kerb, verge)
        front = outer + verge  # the building line
        z = -8.0
        while z < far:
            length = rng.uniform(8.0, 26.0)
            if rng.random() >= params.building_gap:
                setback = rng.uniform(0.0, 3.0) if rng.random() < 0.4 else 0.0
                height = rng.uniform(params.building_height_min, params.building_height_max)
                b.box(side * (front + setback), side * (front + setback + rng.uniform(10, 20)),
                      0.0, height, z, z + length, BUILDING, "building")
            z += length + (rng.uniform(0.0, 2.0) if rng.random() < 0.3 else 0.0)
    return _Street(half, lane_centres, camera_x, sides)


def _verges(params: SceneParams, b: _Builder, street: _Street) -> None:
    """Walls, fences and hedges on the verge line, grass patches on the sidewalks."""
    rng = b.rng
    half, sides = street.half, street.sides
    for kind, rate in (("wall", params.walls), ("fence", params.fences), ("hedge", params.hedges)):
        for _ in range(_count(rng, rate)):
            side = rng.choice((-1.0, 1.0))
            walk, kerb, verge = sides[side]
            x = half + walk + rng.uniform(0.0, max(verge - 0.3, 0.0)) + 0.1
            z0 = rng.uniform(2.0, STREET_LENGTH)
            z1 = z0 + rng.uniform(3.0, 15.0)
            if kind == "wall":
                t = rng.uniform(0.2, 0.4)
                b.box(side * x, side * (x + t), 0.0, rng.uniform(0.8, 2.2), z0, z1, WALL, "wall")
            elif kind == "fence":
                b.box(side * x, side * (x + 0.06), 0.0, rng.uniform(1.0, 2.0), z0, z1, FENCE, "fence")
            else:
                t = rng.uniform(0.6, 1.2)
                b.box(side * x, side * (x + t), 0.0, rng.uniform(0.5, 1.6), z0, z1, VEGETATION, "foliage")

    for _ in range(_count(rng, params.grass_patches)):
        side = rng.choice((-1.0, 1.0))
        walk, kerb, _ = sides[side]
        x0 = half + rng.uniform(0.3, 0.6)
        x1 = min(x0 + rng.uniform(0.8, 2.0), half + walk - 0.2)
        if x1 > x0:
            z0 = rng.uniform(0.0, STREET_LENGTH)
            b.box(side * x0, side * x1, 0.0, kerb + 0.03, z0, z0 + rng.uniform(3.0, 12.0), TERRAIN, "terrain")


def _trees_and_poles(params: SceneParams, b: _Builder, street: _Street) -> None:
    """Trees on the verges and sidewalks; poles along the kerbs with traffic lights and signs."""
    rng = b.rng
    half, sides = street.half, street.sides
    for _ in range(_count(rng, params.trees)):
        side = rng.choice((-1.0, 1.0))
        walk, kerb, verge = sides[side]
        x = side * (half + rng.uniform(0.8, walk + max(verge, 0.3)))
        z = rng.uniform(3.0, STREET_LENGTH + 20.0)
        trunk_top = rng.uniform(2.0, 4.0)
        b.box(x - 0.15, x + 0.15, 0.0, trunk_top, z - 0.15, z + 0.15, VEGETATION, "trunk")
        r = rng.uniform(1.4, 3.2)
        b.sphere(x, trunk_top + 0.7 * r, z, r, VEGETATION, "foliage")

    for _ in range(_count(rng, params.poles)):
        side = rng.choice((-1.0, 1.0))
        x = side * (half + rng.uniform(0.3, 0.6))
        z = rng.uniform(4.0, STREET_LENGTH)
        w = rng.uniform(0.06, 0.1)
        top = rng.uniform(3.5, 8.0)
        b.box(x - w, x + w, 0.0, top, z - w, z + w, POLE, "pole")
        if rng.random() < params.traffic_lights:
            if rng.random() < 0.5:  # on an arm over the road
                reach = rng.uniform(2.0, min(6.0, half + 1.0))
                top = max(top, 5.0)
                b.box(x, x - side * reach, top - 0.15, top, z - 0.07, z + 0.07, POLE, "pole")
                lx = x - side * reach
                b.box(lx - 0.18, lx + 0.18, top - 1.1, top - 0.15, z - 0.2, z + 0.1, TRAFFIC_LIGHT, "light")
            else:
                ly = min(top, rng.uniform(2.6, 3.6))
                b.box(x - 0.18, x + 0.18, ly - 0.95, ly, z - 0.3, z - w, TRAFFIC_LIGHT, "light")
        if rng.random() < params.signs:
            sy = rng.uniform(2.0, 2.8)
            s = rng.uniform(0.3, 0.45)
            b.box(x - s, x + s, sy - 2 * s, sy, z - w - 0.04, z - w, TRAFFIC_SIGN, "sign")


def _vehicles(params: SceneParams, b: _Builder, street: _Street) -> None:
    """Cars, trucks and buses parked along the kerbs or in the lanes, sometimes a tram."""
    rng = b.rng
    half, lane_centres, camera_x = street.half, street.lane_centres, street.camera_x

    # Parked along the kerbs, moving in the lanes (never right in front of the camera).
    def vehicle_slot(length: float) -> tuple[float, float] | None:
        for _ in range(6):
            if rng.random() < 0.35:
                x = rng.choice((-1.0, 1.0)) * (half - 1.15)
            else:
                x = float(rng.choice(lane_centres))
            z = rng.uniform(3.0, STREET_LENGTH)
            if abs(x - camera_x) < 1.0 and z < 12.0:
                continue
            return x, z
        return None

    for _ in range(_count(rng, params.cars)):
        slot = vehicle_slot(4.5)
        if slot is None:
            continue
        x, z = slot
        hw, length = rng.uniform(0.85, 0.95), rng.uniform(3.9, 4.8)
        body = rng.uniform(0.65, 0.85)
        b.box(x - hw + 0.1, x + hw - 0.1, 0.0, 0.35, z + 0.2, z + length - 0.2, CAR, "tyre")
        b.box(x - hw, x + hw, 0.3, 0.3 + body, z, z + length, CAR, "paint")
        b.box(x - hw + 0.08, x + hw - 0.08, 0.3 + body, 0.3 + body + rng.uniform(0.45, 0.6),
              z + 0.25 * length, z + 0.8 * length, CAR, "glass")
    for _ in range(_count(rng, params.trucks)):
        slot = vehicle_slot(9.0)
        if slot is None:
            continue
        x, z = slot
        length, height = rng.uniform(6.5, 10.0), rng.uniform(3.0, 3.8)
        b.box(x - 1.15, x + 1.15, 0.0, 0.5, z, z + length, TRUCK, "tyre")
        b.box(x - 1.2, x + 1.2, 0.5, 2.6, z, z + 2.0, TRUCK, "paint")
        b.box(x - 1.25, x + 1.25, 0.5, height, z + 2.2, z + length, TRUCK, "frame")
    for _ in range(_count(rng, params.buses)):
        slot = vehicle_slot(12.0)
        if slot is None:
            continue
        x, z = slot
        length = rng.uniform(10.5, 13.0)
        b.box(x - 1.2, x + 1.2, 0.0, 0.4, z, z + length, BUS, "tyre")
        b.box(x - 1.25, x + 1.25, 0.3, 1.6, z, z + length, BUS, "paint")
        b.box(x - 1.22, x + 1.22, 1.6, 2.6, z, z + length, BUS, "glass")
        b.box(x - 1.25, x + 1.25, 2.6, rng.uniform(3.0, 3.3), z, z + length, BUS, "paint")
    if rng.random() < params.tram:
        z = rng.uniform(12.0, 50.0)
        length = rng.uniform(20.0, 32.0)
        x = 0.0 if abs(camera_x) > 1.4 else (half - 1.4) * rng.choice((-1.0, 1.0))
        b.box(x - 1.3, x + 1.3, 0.3, 1.5, z, z + length, TRAIN, "paint")
        b.box(x - 1.28, x + 1.28, 1.5, 2.6, z, z + length, TRAIN, "glass")
        b.box(x - 1.3, x + 1.3, 2.6, 3.4, z, z + length, TRAIN, "paint")
        b.box(x - 0.05, x + 0.05, 3.4, 5.8, z + 0.3 * length, z + 0.32 * length, POLE, "pole")


def _people(params: SceneParams, b: _Builder, street: _Street) -> None:
    """Pedestrians on the sidewalks (some crossing), riders, and bikes parked on the sidewalks."""
    rng = b.rng
    half, lane_centres, camera_x, sides = street.half, street.lane_centres, street.camera_x, street.sides
    for _ in range(_count(rng, params.people)):
        z = rng.uniform(4.0, STREET_LENGTH)
        if rng.random() < 0.15:
            x = rng.uniform(-half, half)
            if abs(x - camera_x) < 1.2 and z < 10.0:
                continue
        else:
            side = rng.choice((-1.0, 1.0))
            x = side * (half + rng.uniform(0.3, max(sides[side][0] - 0.3, 0.4)))
        b.person(x, z)
    for _ in range(_count(rng, params.riders)):
        x = float(rng.choice(lane_centres)) if rng.random() < 0.4 else rng.choice((-1.0, 1.0)) * (half - 0.8)
        z = rng.uniform(6.0, STREET_LENGTH)
        if abs(x - camera_x) < 1.2 and z < 12.0:
            z += 12.0
        _bike(b, x, z, motor=rng.random() < 0.4, rider=True)
    for _ in range(_count(rng, params.parked_bikes)):
        side = rng.choice((-1.0, 1.0))
        x = side * (half + rng.uniform(0.5, max(sides[side][0] - 0.5, 0.6)))
        _bike(b, x, rng.uniform(4.0, STREET_LENGTH), motor=rng.random() < 0.4, rider=False)


def _bike(b: _Builder, x: float, z: float, motor: bool, rider: bool) -> None:
    """A bicycle or motorcycle along the street, optionally with its rider."""
    if motor:
        b.box(x - 0.3, x + 0.3, 0.0, 1.05, z - 1.0, z + 1.0, MOTORCYCLE, "paint")
        seat = 1.0
    else:
        b.box(x - 0.04, x + 0.04, 0.0, 0.95, z - 0.85, z + 0.85, BICYCLE, "frame")
        seat = 0.95
    if rider:
        b.person(x, z - 0.2, label=RIDER, base=seat)
