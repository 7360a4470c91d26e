"""Labelled scene layouts: outdoor streets and indoor rooms, randomised from a seed.

Layouts are pure functions of (config, seed): every random draw comes from a generator seeded by
``(seed, purpose, index)``. An outdoor street is made of independent blocks along x, each seeded by
its own index, so a longer sequence only adds blocks and never changes the ones a shorter sequence
already saw (scan k is the same whatever the sequence length).

Coordinates: metres, z up, ground at z = 0 (roads and floors are flat at exactly z = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .meshes import SceneBuilder, SceneMesh, box, cylinder, height_field, placed, rotation_x, sphere
from .paths import LoopPath, StreetPath

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

# Purposes mixed into the seed so independent parts never share a random stream.
LAYOUT_STREAM, BLOCK_STREAM = 1, 2
BLOCK_INDEX_OFFSET = 1 << 20  # block indices can be negative; SeedSequence wants non-negative words


def class_names(scene: str) -> tuple[str, ...]:
    return {"outdoor": OUTDOOR_CLASSES, "indoor": INDOOR_CLASSES}[scene]


def class_colors(scene: str) -> np.ndarray:
    """(C, 3) uint8 RGB per class id."""
    return {"outdoor": OUTDOOR_COLORS, "indoor": INDOOR_COLORS}[scene]


def stream(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), purpose, int(index)]))


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def count(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


# =========================================================================== outdoor


@dataclass
class OutdoorSceneConfig:
    """Street layout ranges; counts are per block (and per side where named so), min..max inclusive."""

    block_length: float = 20.0
    road_half_width: tuple[float, float] = (5.0, 7.0)
    sidewalk_width: tuple[float, float] = (2.0, 3.5)
    curb_height: tuple[float, float] = (0.10, 0.16)
    setback: tuple[float, float] = (2.5, 8.0)  # terrain strip between sidewalk and building line
    terrain_depth: float = 20.0  # how far terrain extends behind the building line (seen through gaps)
    terrain_roughness: float = 0.25  # metres, amplitude of the terrain's height variation
    building_length: tuple[float, float] = (6.0, 20.0)
    building_gap: tuple[float, float] = (0.0, 8.0)
    building_height: tuple[float, float] = (4.0, 18.0)
    building_depth: tuple[float, float] = (8.0, 15.0)
    parked_cars_per_side: tuple[int, int] = (0, 3)
    oncoming_car_prob: float = 0.3
    trees_per_side: tuple[int, int] = (1, 2)
    bushes_per_side: tuple[int, int] = (0, 3)
    street_lights: tuple[int, int] = (1, 1)
    traffic_signs: tuple[int, int] = (1, 1)
    persons: tuple[int, int] = (1, 3)
    fences: tuple[int, int] = (1, 2)
    lane_weave: float = 0.3  # metres of lateral sensor wander


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


def street_layout(cfg: OutdoorSceneConfig, seed: int) -> StreetLayout:
    rng = stream(seed, LAYOUT_STREAM)
    n_waves = 6
    wavelength = rng.uniform(4.0, 25.0, n_waves)
    direction = rng.uniform(0.0, 2.0 * np.pi, n_waves)
    vectors = (2.0 * np.pi / wavelength)[:, None] * np.stack([np.cos(direction), np.sin(direction)], 1)
    amplitudes = rng.uniform(0.5, 1.0, n_waves)
    return StreetLayout(
        road_half=uniform(rng, cfg.road_half_width),
        sidewalk=uniform(rng, cfg.sidewalk_width),
        curb=uniform(rng, cfg.curb_height),
        road_reflectivity=float(rng.uniform(0.08, 0.16)),
        sidewalk_reflectivity=float(rng.uniform(0.25, 0.4)),
        terrain_reflectivity=float(rng.uniform(0.3, 0.5)),
        wave_vectors=vectors,
        wave_phases=rng.uniform(0.0, 2.0 * np.pi, n_waves),
        wave_amplitudes=amplitudes * cfg.terrain_roughness / amplitudes.sum(),
        weave_phase=float(rng.uniform(0.0, 2.0 * np.pi)),
        weave_wavelength=float(rng.uniform(40.0, 90.0)),
    )


def terrain_height(layout: StreetLayout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Terrain surface height: a smooth undulation (continuous across blocks) that starts level with
    the sidewalk top at its outer edge and rises to full roughness within two metres."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    phase = x[..., None] * layout.wave_vectors[:, 0] + y[..., None] * layout.wave_vectors[:, 1]
    wave = (layout.wave_amplitudes * np.sin(phase + layout.wave_phases)).sum(-1)
    ramp = np.clip((np.abs(y) - layout.terrain_inner) / 2.0, 0.0, 1.0)
    return layout.curb - 0.02 + ramp * wave


def street_path(cfg: OutdoorSceneConfig, layout: StreetLayout, speed: float) -> StreetPath:
    return StreetPath(
        start_x=0.0, lane_y=layout.lane_y, speed=speed, weave_amplitude=cfg.lane_weave,
        weave_wavelength=layout.weave_wavelength, weave_phase=layout.weave_phase,
    )


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


def add_street_block(builder: SceneBuilder, cfg: OutdoorSceneConfig, layout: StreetLayout, seed: int,
                     block: int) -> None:
    """Everything on the street between x = block * L and (block + 1) * L."""
    rng = stream(seed, BLOCK_STREAM, block + BLOCK_INDEX_OFFSET)
    length = cfg.block_length
    x0, x1 = block * length, (block + 1) * length
    rh, sw, curb = layout.road_half, layout.sidewalk, layout.curb

    builder.new_instance()
    builder.add(box((x0, -rh, -0.3), (x1, rh, 0.0)), OUT["road"], layout.road_reflectivity)
    for dash in np.arange(x0, x1, 6.0):  # dashed centre line, flush on the road (labelled road)
        builder.add(box((dash, -0.07, -0.01), (dash + 3.0, 0.07, 0.003)), OUT["road"], 0.8)
    for side in (-1.0, 1.0):
        line_y = side * (rh - 2.2)  # parking-strip edge lines
        builder.add(box((x0, line_y - 0.06, -0.01), (x1, line_y + 0.06, 0.003)), OUT["road"], 0.75)

    for side in (-1.0, 1.0):
        inner, outer = sorted((side * rh, side * (rh + sw)))
        builder.new_instance()
        builder.add(box((x0, inner, -0.3), (x1, outer, curb)), OUT["sidewalk"], layout.sidewalk_reflectivity)

        # terrain: a height field from the sidewalk's outer edge to behind the buildings
        builder.new_instance()
        xs = np.linspace(x0, x1, int(round(length)) + 1)
        far = layout.terrain_inner + cfg.setback[1] + cfg.terrain_depth
        ys = side * np.linspace(layout.terrain_inner, far, int(round(far - layout.terrain_inner)) + 1)
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        builder.add(height_field(xs, ys, terrain_height(layout, gx, gy)), OUT["terrain"], layout.terrain_reflectivity)

        setback = uniform(rng, cfg.setback)
        building_line = layout.terrain_inner + setback
        cursor = x0 + rng.uniform(0.0, cfg.building_gap[1])
        while cursor < x1 - 2.0:
            end = min(cursor + uniform(rng, cfg.building_length), x1)
            depth = uniform(rng, cfg.building_depth)
            near, back = sorted((side * building_line, side * (building_line + depth)))
            height = uniform(rng, cfg.building_height)
            facade = rng.uniform(0.15, 0.6)
            builder.new_instance()
            builder.add(box((cursor, near, -0.5), (end, back, height)), OUT["building"], facade)
            if rng.random() < 0.5 and end - cursor > 1.0:  # storey ledges/balconies, so facades are not flat
                face = side * building_line
                for level in np.arange(3.0, height - 1.0, rng.uniform(2.8, 3.5)):
                    lo_y, hi_y = sorted((face, face - side * rng.uniform(0.2, 1.2)))
                    builder.add(box((cursor + 0.3, lo_y, level), (end - 0.3, hi_y, level + 0.2)),
                                OUT["building"], facade)
            cursor = end + uniform(rng, cfg.building_gap)

        for _ in range(count(rng, cfg.trees_per_side)):
            tx = rng.uniform(x0 + 1.0, x1 - 1.0)
            ty = side * (layout.terrain_inner + rng.uniform(0.7, max(setback - 0.7, 0.8)))
            add_tree(builder, rng, tx, ty, float(terrain_height(layout, tx, ty)))
        for _ in range(count(rng, cfg.bushes_per_side)):
            bx = rng.uniform(x0, x1)
            by = side * (layout.terrain_inner + rng.uniform(0.5, setback))
            radius = rng.uniform(0.4, 1.0)
            builder.new_instance()
            builder.add(placed(sphere(1.0, 5, 8), scale=(radius * rng.uniform(1.0, 1.8), radius, radius * 0.7),
                               translation=(bx, by, float(terrain_height(layout, bx, by)))),
                        OUT["vegetation"], rng.uniform(0.35, 0.6), penetration=FOLIAGE_PENETRATION)

        cursor = x0 + rng.uniform(0.5, 4.0)  # parked cars, bumper to bumper with gaps, inside the block
        for _ in range(count(rng, cfg.parked_cars_per_side)):
            car_length = uniform(rng, CAR_LENGTH)
            if cursor + car_length > x1:
                break
            heading = rng.choice([0.0, np.pi]) + rng.normal(0.0, 0.03)
            add_car(builder, rng, cursor + car_length / 2, side * (rh - 1.1), heading, car_length)
            cursor += car_length + rng.uniform(1.0, 6.0)

    if rng.random() < cfg.oncoming_car_prob:
        add_car(builder, rng, rng.uniform(x0 + 3.0, x1 - 3.0), -layout.lane_y, np.pi + rng.normal(0.0, 0.03),
                uniform(rng, CAR_LENGTH))

    for _ in range(count(rng, cfg.street_lights)):
        add_street_light(builder, rng, rng.uniform(x0 + 0.5, x1 - 0.5), rng.choice([-1.0, 1.0]), layout)
    for _ in range(count(rng, cfg.traffic_signs)):
        add_traffic_sign(builder, rng, rng.uniform(x0 + 0.5, x1 - 0.5), rng.choice([-1.0, 1.0]), layout)
    for _ in range(count(rng, cfg.persons)):
        side = rng.choice([-1.0, 1.0])
        add_person(builder, rng, rng.uniform(x0 + 0.5, x1 - 0.5), side * (rh + rng.uniform(0.7, sw - 0.4)), curb)
    for _ in range(count(rng, cfg.fences)):
        side = rng.choice([-1.0, 1.0])
        fx0 = rng.uniform(x0, x1 - 4.0)
        fx1 = min(fx0 + rng.uniform(4.0, 15.0), x1)
        add_fence(builder, rng, fx0, fx1, side * (layout.terrain_inner + 0.25), curb)


def outdoor_scene(cfg: OutdoorSceneConfig, seed: int, x_range: tuple[float, float]) -> SceneMesh:
    """The street blocks covering ``x_range`` (metres along the street)."""
    layout = street_layout(cfg, seed)
    builder = SceneBuilder()
    first = int(np.floor(x_range[0] / cfg.block_length))
    last = int(np.ceil(x_range[1] / cfg.block_length))
    for block in range(first, last):
        add_street_block(builder, cfg, layout, seed, block)
    return builder.build()


# =========================================================================== indoor


@dataclass
class IndoorSceneConfig:
    """Room layout ranges; the sensor loops on an ellipse ``path_inset`` metres inside the walls."""

    room_length: tuple[float, float] = (8.0, 14.0)
    room_width: tuple[float, float] = (7.0, 10.0)
    room_height: tuple[float, float] = (2.5, 3.2)
    path_inset: float = 2.0
    path_clearance: float = 0.4  # free space between the path and any free-standing furniture
    doors: tuple[int, int] = (1, 2)
    cabinets: tuple[int, int] = (2, 5)
    sofas: tuple[int, int] = (1, 2)
    tables: tuple[int, int] = (1, 3)
    chairs_per_table: tuple[int, int] = (2, 4)
    loose_chairs: tuple[int, int] = (1, 3)
    placement_tries: int = 200


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


def room_path(cfg: IndoorSceneConfig, room: Room, speed: float, seed: int) -> LoopPath:
    rng = stream(seed, LAYOUT_STREAM, 1)
    return LoopPath(semi_x=room.length / 2 - cfg.path_inset, semi_y=room.width / 2 - cfg.path_inset,
                    speed=speed, start_angle=float(rng.uniform(0.0, 2.0 * np.pi)))


def room_dimensions(cfg: IndoorSceneConfig, seed: int) -> Room:
    rng = stream(seed, LAYOUT_STREAM)
    return Room(uniform(rng, cfg.room_length), uniform(rng, cfg.room_width), uniform(rng, cfg.room_height))


class Footprints:
    """Axis-aligned xy rectangles already taken, and the path to keep clear; rejection sampling."""

    def __init__(self, path_outline: np.ndarray, clearance: float) -> None:
        self.rects: list[np.ndarray] = []  # [xmin, ymin, xmax, ymax]
        self.path = path_outline
        self.clearance = clearance

    def free(self, rect: np.ndarray, check_path: bool = True) -> bool:
        if self.rects:
            taken = np.array(self.rects)
            overlap = ((rect[0] < taken[:, 2]) & (taken[:, 0] < rect[2])
                       & (rect[1] < taken[:, 3]) & (taken[:, 1] < rect[3]))
            if overlap.any():
                return False
        if check_path:
            nearest = np.clip(self.path, rect[:2], rect[2:])
            if np.min(np.linalg.norm(self.path - nearest, axis=1)) < self.clearance:
                return False
        return True


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


def place_on_wall(rng: np.random.Generator, room: Room, footprints: Footprints, width: float, depth: float,
                  tries: int) -> tuple[int, float] | None:
    """A wall and a position along it where a ``width`` x ``depth`` object fits; None when none found."""
    for _ in range(tries):
        wall = int(rng.integers(0, 4))
        mid, yaw, wall_length = room.wall_frame(wall)
        margin = wall_length / 2 - width / 2 - 0.3
        if margin <= 0:
            continue
        along = rng.uniform(-margin, margin)
        center = local_to_world(mid, yaw, np.array([along, depth / 2]))
        rect = rotated_rect(center, np.array([width / 2, depth / 2]), yaw)
        if footprints.free(rect, check_path=False):
            footprints.rects.append(rect)
            return wall, along
    return None


def indoor_scene(cfg: IndoorSceneConfig, seed: int, path: LoopPath) -> SceneMesh:
    room = room_dimensions(cfg, seed)
    rng = stream(seed, BLOCK_STREAM)
    builder = SceneBuilder()
    half_l, half_w, height, wall = room.length / 2, room.width / 2, room.height, 0.2

    builder.new_instance()
    builder.add(box((-half_l - wall, -half_w - wall, -0.2), (half_l + wall, half_w + wall, 0.0)), IN["floor"],
                rng.uniform(0.2, 0.6))
    builder.new_instance()
    builder.add(box((-half_l - wall, -half_w - wall, height), (half_l + wall, half_w + wall, height + 0.2)),
                IN["ceiling"], rng.uniform(0.65, 0.85))
    wall_reflectivity = rng.uniform(0.5, 0.85)
    for lo, hi in [((-half_l - wall, -half_w - wall), (half_l + wall, -half_w)),
                   ((-half_l - wall, half_w), (half_l + wall, half_w + wall)),
                   ((-half_l - wall, -half_w), (-half_l, half_w)),
                   ((half_l, -half_w), (half_l + wall, half_w))]:
        builder.new_instance()
        builder.add(box((*lo, 0.0), (*hi, height)), IN["wall"], wall_reflectivity)

    footprints = Footprints(path.outline(), cfg.path_clearance)
    tries = cfg.placement_tries
    # Doors go first so cabinets and sofas never block them (a door's footprint includes swing room).
    for _ in range(count(rng, cfg.doors)):
        width, door_height = rng.uniform(0.85, 1.0), rng.uniform(1.95, 2.1)
        spot = place_on_wall(rng, room, footprints, width, 0.8, tries)
        if spot is not None:
            add_wall_object(builder, room, spot[0], spot[1],
                            [((-width / 2, -0.02, 0.0), (width / 2, 0.04, door_height)),
                             ((width / 2 - 0.15, 0.04, 1.0), (width / 2 - 0.05, 0.1, 1.05))],
                            IN["door"], rng.uniform(0.35, 0.6))
    for _ in range(count(rng, cfg.cabinets)):
        width, depth, cab_height = rng.uniform(0.6, 2.0), rng.uniform(0.4, 0.6), rng.uniform(0.8, 2.2)
        spot = place_on_wall(rng, room, footprints, width, depth, tries)
        if spot is not None:
            add_wall_object(builder, room, spot[0], spot[1],
                            [((-width / 2, 0.0, 0.0), (width / 2, depth, cab_height))], IN["cabinet"],
                            rng.uniform(0.3, 0.7))
    for _ in range(count(rng, cfg.sofas)):
        width, depth = rng.uniform(1.6, 2.4), rng.uniform(0.85, 1.0)
        spot = place_on_wall(rng, room, footprints, width, depth, tries)
        if spot is not None:
            arm = 0.2
            add_wall_object(builder, room, spot[0], spot[1], [
                ((-width / 2 + arm, 0.05, 0.1), (width / 2 - arm, depth, 0.42)),  # seat
                ((-width / 2, 0.0, 0.1), (width / 2, 0.25, 0.85)),  # back
                ((-width / 2, 0.0, 0.1), (-width / 2 + arm, depth, 0.62)),  # arms
                ((width / 2 - arm, 0.0, 0.1), (width / 2, depth, 0.62)),
            ], IN["sofa"], rng.uniform(0.2, 0.4))

    def place_free(half_extent: np.ndarray, yaw: float) -> np.ndarray | None:
        """A centre where the footprint lies inside the room, clear of the path and other objects."""
        bounds = rotated_rect(np.zeros(2), half_extent, yaw)[2:] + 0.05
        if np.any(bounds >= [half_l, half_w]):
            return None
        for _ in range(tries):
            center = rng.uniform(-np.array([half_l, half_w]) + bounds, np.array([half_l, half_w]) - bounds)
            rect = rotated_rect(center, half_extent, yaw)
            if footprints.free(rect):
                footprints.rects.append(rect)
                return center
        return None

    def place_chair_at(center: np.ndarray, yaw: float) -> bool:
        rect = rotated_rect(center, np.array([0.3, 0.3]), yaw)
        inside = np.all(np.abs(rect.reshape(2, 2)) < [half_l, half_w])
        if inside and footprints.free(rect):
            footprints.rects.append(rect)
            add_chair(builder, rng, center, yaw)
            return True
        return False

    for _ in range(count(rng, cfg.tables)):
        size = np.array([rng.uniform(0.8, 1.8), rng.uniform(0.7, 1.0)])
        yaw = float(rng.choice([0.0, np.pi / 2])) + rng.normal(0.0, 0.05)
        center = None
        for shrink in (1.0, 0.8, 0.6):  # narrow rooms: smaller tables rather than none
            center = place_free(size * shrink / 2, yaw)
            if center is not None:
                size = size * shrink
                break
        if center is None:
            continue
        builder.new_instance()
        add_legged(builder, center, yaw, tuple(size), rng.uniform(0.72, 0.76), 0.04, 0.06, IN["table"],
                   rng.uniform(0.3, 0.6))
        seats = [(np.array([0.0, -(size[1] / 2 + 0.3)]), np.pi / 2), (np.array([0.0, size[1] / 2 + 0.3]), -np.pi / 2),
                 (np.array([-(size[0] / 2 + 0.3), 0.0]), 0.0), (np.array([size[0] / 2 + 0.3, 0.0]), np.pi)]
        wanted = count(rng, cfg.chairs_per_table)
        for index in rng.permutation(4):  # chairs only where they fit (the path may pass close by)
            if wanted == 0:
                break
            offset, facing = seats[index]
            offset = offset + rng.uniform(-0.15, 0.15, 2)
            wanted -= place_chair_at(local_to_world(center, yaw, offset), yaw + facing + rng.normal(0.0, 0.15))
    for _ in range(count(rng, cfg.loose_chairs)):
        yaw = rng.uniform(0.0, 2.0 * np.pi)
        for _ in range(tries):
            if place_chair_at(rng.uniform([-half_l + 0.5, -half_w + 0.5], [half_l - 0.5, half_w - 0.5]), yaw):
                break
    return builder.build()
