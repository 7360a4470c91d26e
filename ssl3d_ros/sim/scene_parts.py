"""The parts scenes are built from: label spaces, street and room geometry, and labelled objects.

Each ``add_*`` adds one object (a new instance) to a ``SceneBuilder``, drawing its shape and
reflectivity from the generator it is given; nothing here seeds a generator. The scene builders in
``scenes`` own the seeding and the order of the draws, and re-export every name of this module.

Coordinates: metres, z up, ground at z = 0 (roads and floors are flat at exactly z = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .meshes import SceneBuilder, box, cylinder, placed, rotation_x, sphere

# Label 0 is reserved for "no label" (rays that hit nothing never become points, so it only marks
# ignore regions of consumers); ids are the positions in these tuples.
OUTDOOR_CLASSES: tuple[str, ...] = (
    "unlabeled", "road", "sidewalk", "terrain", "building", "vegetation", "trunk",
    "car", "pole", "traffic-sign", "person", "fence",
)
INDOOR_CLASSES: tuple[str, ...] = (
    "unlabeled", "floor", "wall", "ceiling", "door", "table", "chair", "cabinet", "sofa",
)
# RGB, SemanticKITTI-like outdoors and ScanNet-like indoors, so pictures look familiar.
OUTDOOR_COLORS = np.array([
    (0, 0, 0), (255, 0, 255), (75, 0, 75), (150, 240, 80), (255, 200, 0), (0, 175, 0),
    (135, 60, 0), (100, 150, 245), (255, 240, 150), (255, 0, 0), (30, 30, 255), (255, 120, 50),
], dtype=np.uint8)
INDOOR_COLORS = np.array([
    (0, 0, 0), (152, 223, 138), (174, 199, 232), (200, 200, 200), (214, 39, 40),
    (255, 152, 150), (188, 189, 34), (31, 119, 180), (140, 86, 75),
], dtype=np.uint8)

OUTDOOR_COLORS.flags.writeable = False  # shared module constants: consumers copy before editing
INDOOR_COLORS.flags.writeable = False

OUT = {name: i for i, name in enumerate(OUTDOOR_CLASSES)}
IN = {name: i for i, name in enumerate(INDOOR_CLASSES)}

FOLIAGE_PENETRATION = 0.25  # metres: mean depth of LiDAR returns inside tree crowns and bushes


def class_names(scene: str) -> tuple[str, ...]:
    return {"outdoor": OUTDOOR_CLASSES, "indoor": INDOOR_CLASSES}[scene]


def class_colors(scene: str) -> np.ndarray:
    """(C, 3) uint8 RGB per class id."""
    return {"outdoor": OUTDOOR_COLORS, "indoor": INDOOR_COLORS}[scene]


# =========================================================================== street


@dataclass(frozen=True)
class StreetLayout:
    """Street-wide parameters shared by all blocks (drawn once from the layout stream)."""

    road_half: float
    sidewalk: float
    curb: float
    road_reflectivity: float
    sidewalk_reflectivity: float
    terrain_reflectivity: float
    wave_vectors: np.ndarray  # (K, 2) terrain undulation wave vectors
    wave_phases: np.ndarray  # (K,)
    wave_amplitudes: np.ndarray  # (K,)
    weave_phase: float
    weave_wavelength: float

    @property
    def lane_y(self) -> float:
        """Centre of the right-hand driving lane (the 2.2 m parking strips stay clear of the sensor)."""
        return -(self.road_half - 2.2) / 2.0

    @property
    def terrain_inner(self) -> float:
        return self.road_half + self.sidewalk


def terrain_height(layout: StreetLayout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Terrain surface height: a smooth undulation (continuous across blocks) that starts level with
    the sidewalk top at its outer edge and rises to full roughness within two metres."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    phase = x[..., None] * layout.wave_vectors[:, 0] + y[..., None] * layout.wave_vectors[:, 1]
    wave = (layout.wave_amplitudes * np.sin(phase + layout.wave_phases)).sum(-1)
    ramp = np.clip((np.abs(y) - layout.terrain_inner) / 2.0, 0.0, 1.0)
    return layout.curb - 0.02 + ramp * wave

CAR_LENGTH = (3.9, 4.9)


def add_car(builder: SceneBuilder, rng: np.random.Generator, x: float, y: float, yaw: float, length: float) -> None:
    """A car (body, cabin, four wheels) standing on z = 0, centred at (x, y), heading ``yaw``."""
    width = rng.uniform(1.7, 1.95)
    body_top = rng.uniform(0.95, 1.1)
    cabin_top = body_top + rng.uniform(0.4, 0.55)
    paint = rng.uniform(0.05, 0.8)
    builder.new_instance()
    pose = dict(translation=(x, y, 0.0), yaw=yaw)
    builder.add(placed(box((-length / 2, -width / 2, 0.3), (length / 2, width / 2, body_top)), **pose),
                OUT["car"], paint)
    front, rear = rng.uniform(0.9, 1.3), rng.uniform(0.5, 0.9)
    builder.add(placed(box((-length / 2 + rear, -width / 2 + 0.1, body_top),
                           (length / 2 - front, width / 2 - 0.1, cabin_top)), **pose), OUT["car"], paint * 0.6)
    wheel = placed(cylinder(0.32, -0.11, 0.11, segments=10), rotation=rotation_x(np.pi / 2))
    axle = length / 2 - 0.8
    for wx in (-axle, axle):
        for wy in (-(width / 2 - 0.11), width / 2 - 0.11):
            local = np.array([wx, wy])
            c, s = np.cos(yaw), np.sin(yaw)
            world = (x + c * local[0] - s * local[1], y + s * local[0] + c * local[1], 0.32)
            builder.add(placed(wheel, translation=world, yaw=yaw), OUT["car"], 0.05)


def add_tree(builder: SceneBuilder, rng: np.random.Generator, x: float, y: float, ground: float) -> None:
    trunk_height = rng.uniform(1.8, 3.5)
    builder.new_instance()
    builder.add(placed(cylinder(rng.uniform(0.1, 0.25), -0.5, trunk_height, segments=8),
                       translation=(x, y, ground)), OUT["trunk"], rng.uniform(0.2, 0.4))
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(1.0, 2.2)
        offset = (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), trunk_height + radius * rng.uniform(0.5, 0.9))
        builder.add(placed(sphere(1.0, rings=6, segments=10), scale=(radius, radius, radius * rng.uniform(0.8, 1.2)),
                           translation=(x + offset[0], y + offset[1], ground + offset[2])),
                    OUT["vegetation"], rng.uniform(0.35, 0.6), penetration=FOLIAGE_PENETRATION)


def add_person(builder: SceneBuilder, rng: np.random.Generator, x: float, y: float, ground: float) -> None:
    """Legs, torso, arms and head, scaled to a height of 1.5-1.95 m, facing a random direction."""
    scale = rng.uniform(1.5, 1.95) / 1.75
    yaw = rng.uniform(0.0, 2.0 * np.pi)
    cloth = rng.uniform(0.15, 0.5)
    builder.new_instance()
    parts = [
        placed(cylinder(0.075, 0.0, 0.85, 8), translation=(0.0, -0.1, 0.0)),
        placed(cylinder(0.075, 0.0, 0.85, 8), translation=(0.0, 0.1, 0.0)),
        placed(cylinder(0.18, 0.8, 1.45, 10), scale=(0.7, 1.0, 1.0)),
        placed(cylinder(0.05, 0.85, 1.42, 6), translation=(0.0, -0.24, 0.0)),
        placed(cylinder(0.05, 0.85, 1.42, 6), translation=(0.0, 0.24, 0.0)),
        placed(sphere(0.11, 5, 8), translation=(0.0, 0.0, 1.6)),
    ]
    for part in parts:
        builder.add(placed(part, scale=(scale, scale, scale), yaw=yaw, translation=(x, y, ground)),
                    OUT["person"], cloth)


def add_fence(builder: SceneBuilder, rng: np.random.Generator, x0: float, x1: float, y: float, ground: float) -> None:
    """A fence along x: either a solid panel or posts with two rails (see-through)."""
    height = rng.uniform(1.0, 1.8)
    reflectivity = rng.uniform(0.2, 0.6)
    builder.new_instance()
    if rng.random() < 0.5:
        builder.add(box((x0, y - 0.02, ground - 0.1), (x1, y + 0.02, ground + height)), OUT["fence"], reflectivity)
        return
    for px in np.arange(x0, x1 + 1e-6, 2.0):
        builder.add(box((px - 0.04, y - 0.04, ground - 0.1), (px + 0.04, y + 0.04, ground + height)),
                    OUT["fence"], reflectivity)
    for rail_z in (0.3 * height, 0.9 * height):
        builder.add(box((x0, y - 0.02, ground + rail_z - 0.04), (x1, y + 0.02, ground + rail_z + 0.04)),
                    OUT["fence"], reflectivity)


def add_street_light(builder: SceneBuilder, rng: np.random.Generator, x: float, side: float,
                     layout: StreetLayout) -> None:
    y = side * (layout.road_half + 0.4)
    height = rng.uniform(6.0, 9.0)
    builder.new_instance()
    reflectivity = rng.uniform(0.3, 0.55)
    builder.add(placed(cylinder(rng.uniform(0.08, 0.13), -0.2, height, 8), translation=(x, y, layout.curb)),
                OUT["pole"], reflectivity)
    arm = 1.6
    y_in = y - side * arm
    top = layout.curb + height
    builder.add(box((x - 0.05, min(y, y_in), top - 0.1), (x + 0.05, max(y, y_in), top)),
                OUT["pole"], reflectivity)
    builder.add(box((x - 0.25, y_in - 0.15, top - 0.25), (x + 0.25, y_in + 0.15, top - 0.1)),
                OUT["pole"], reflectivity)


def add_traffic_sign(builder: SceneBuilder, rng: np.random.Generator, x: float, side: float,
                     layout: StreetLayout) -> None:
    y = side * (layout.road_half + 0.3)
    top = rng.uniform(2.0, 2.6)
    builder.new_instance()
    builder.add(placed(cylinder(0.04, -0.2, top, 6), translation=(x, y, layout.curb)), OUT["pole"],
                rng.uniform(0.3, 0.5))
    size = rng.uniform(0.5, 0.8)
    z = layout.curb + top
    if rng.random() < 0.5:  # rectangular plate facing along the street
        plate = box((x - 0.06, y - size / 2, z - 0.1), (x - 0.03, y + size / 2, z - 0.1 + size))
    else:  # round plate
        plate = placed(cylinder(size / 2, -0.015, 0.015, 12), rotation=rotation_x(np.pi / 2), yaw=np.pi / 2,
                       translation=(x - 0.05, y, z - 0.1 + size / 2))
    builder.add(plate, OUT["traffic-sign"], rng.uniform(0.8, 1.0))  # retro-reflective


# =========================================================================== room


@dataclass(frozen=True)
class Room:
    length: float
    width: float
    height: float

    def wall_frame(self, wall: int) -> tuple[np.ndarray, float, float]:
        """(midpoint of the wall's inner face, yaw whose local x runs along the wall and local y points
        into the room, wall length) for walls 0..3 (south, east, north, west)."""
        half_l, half_w = self.length / 2, self.width / 2
        return [
            (np.array([0.0, -half_w]), 0.0, self.length),
            (np.array([half_l, 0.0]), np.pi / 2, self.width),
            (np.array([0.0, half_w]), np.pi, self.length),
            (np.array([-half_l, 0.0]), -np.pi / 2, self.width),
        ][wall]


def rotated_rect(center: np.ndarray, half_extent: np.ndarray, yaw: float) -> np.ndarray:
    """Axis-aligned bounds of a rectangle rotated by ``yaw`` (conservative footprint)."""
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    hx = c * half_extent[0] + s * half_extent[1]
    hy = s * half_extent[0] + c * half_extent[1]
    return np.array([center[0] - hx, center[1] - hy, center[0] + hx, center[1] + hy])


def local_to_world(center: np.ndarray, yaw: float, local: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return center + np.array([c * local[0] - s * local[1], s * local[0] + c * local[1]])


def add_legged(builder: SceneBuilder, center: np.ndarray, yaw: float, size: tuple[float, float],
               top: float, thickness: float, leg: float, class_id: int, reflectivity: float) -> None:
    """A top slab on four legs (tables, chair seats), centred at ``center`` with heading ``yaw``."""
    hx, hy = size[0] / 2, size[1] / 2
    pose = dict(translation=(center[0], center[1], 0.0), yaw=yaw)
    builder.add(placed(box((-hx, -hy, top - thickness), (hx, hy, top)), **pose), class_id, reflectivity)
    for sx in (-1, 1):
        for sy in (-1, 1):
            lx, ly = sx * (hx - leg), sy * (hy - leg)
            leg_box = box((lx - leg / 2, ly - leg / 2, 0.0), (lx + leg / 2, ly + leg / 2, top - thickness))
            builder.add(placed(leg_box, **pose), class_id, reflectivity)


def add_chair(builder: SceneBuilder, rng: np.random.Generator, center: np.ndarray, yaw: float) -> None:
    """Seat on legs plus a backrest on the chair's local -x side (it faces +x)."""
    reflectivity = rng.uniform(0.15, 0.5)
    seat = rng.uniform(0.42, 0.5)
    builder.new_instance()
    add_legged(builder, center, yaw, (seat, seat), rng.uniform(0.43, 0.48), 0.05, 0.04, IN["chair"], reflectivity)
    back = box((-seat / 2, -seat / 2, 0.45), (-seat / 2 + 0.05, seat / 2, rng.uniform(0.85, 1.0)))
    builder.add(placed(back, translation=(center[0], center[1], 0.0), yaw=yaw), IN["chair"], reflectivity)


def add_wall_object(builder: SceneBuilder, room: Room, wall: int, along: float, local_boxes: list[tuple],
                    class_id: int, reflectivity: float) -> None:
    """Boxes given in the wall's local frame (x along the wall from ``along``, y into the room)."""
    mid, yaw, _ = room.wall_frame(wall)
    origin = local_to_world(mid, yaw, np.array([along, 0.0]))
    builder.new_instance()
    for lo, hi in local_boxes:
        builder.add(placed(box(lo, hi), translation=(origin[0], origin[1], 0.0), yaw=yaw), class_id, reflectivity)
