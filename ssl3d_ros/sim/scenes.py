"""Labelled scene layouts: outdoor streets and indoor rooms, randomised from a seed.

Layouts are pure functions of (config, seed): every random draw comes from a generator seeded by
``(seed, purpose, index)``. An outdoor street is made of independent blocks along x, each seeded by
its own index, so a longer sequence only adds blocks and never changes the ones a shorter sequence
already saw (scan k is the same whatever the sequence length).

The label spaces, the street and room geometry and the objects (cars, trees, chairs, ...) are in
``scene_parts``; they are re-exported here, so importers keep using ``ssl3d_ros.sim.scenes``.

Coordinates: metres, z up, ground at z = 0 (roads and floors are flat at exactly z = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .meshes import SceneBuilder, SceneMesh, box, height_field, placed, sphere
from .paths import LoopPath, StreetPath
# Names imported here but unused (the label spaces and colours, class_names, class_colors) are
# re-exports: importers keep using ssl3d_ros.sim.scenes for every scene name.
from .scene_parts import (  # noqa: F401
    CAR_LENGTH, FOLIAGE_PENETRATION, IN, INDOOR_CLASSES, INDOOR_COLORS, OUT, OUTDOOR_CLASSES, OUTDOOR_COLORS,
    Room, StreetLayout, add_car, add_chair, add_fence, add_legged, add_person, add_street_light, add_traffic_sign,
    add_tree, add_wall_object, class_colors, class_names, local_to_world, rotated_rect, terrain_height,
)

# Purposes mixed into the seed so independent parts never share a random stream.
LAYOUT_STREAM, BLOCK_STREAM = 1, 2
BLOCK_INDEX_OFFSET = 1 << 20  # block indices can be negative; SeedSequence wants non-negative words


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


def street_path(cfg: OutdoorSceneConfig, layout: StreetLayout, speed: float) -> StreetPath:
    return StreetPath(
        start_x=0.0, lane_y=layout.lane_y, speed=speed, weave_amplitude=cfg.lane_weave,
        weave_wavelength=layout.weave_wavelength, weave_phase=layout.weave_phase,
    )


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
