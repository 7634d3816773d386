"""ViZDoom world: Freedoom maps, no monsters, no HUD, a god-mode player driven by 6 keys + mouse yaw.

Native control (width 7): forward, back, strafe_left, strafe_right, turn_left, turn_right as 0/1 key states
(held for the whole frame, i.e. `frame_skip` Doom tics) + mouse_dx, the yaw turned by the mouse during the frame
in degrees (positive = turn right, like moving a mouse to the right). The action row is the `keyboard_mouse`
row `[6 keys, mouse_dx, 0]` (raw degrees; `episode_meta()["mouse_scale"]` says how many degrees count as 1).

Pose: Doom's map frame is kept as the world frame (x east, y north, z up, Doom units). The camera sits at
(CAMERA_POSITION_X/Y/Z): the player's POSITION plus eye height and view bob. With yaw `a` = ANGLE (degrees,
counter-clockwise from east) and pitch `p` = PITCH (degrees, positive looks down, ZDoom's convention) the OpenCV
camera axes in world coordinates are
    z (forward) = (cos a cos p, sin a cos p, -sin p)
    x (right)   = (sin a, -cos a, 0)
    y (down)    = z cross x
so camera-to-world = [[x y z position], [0 0 0 1]]. Pitch stays 0 here: no control looks up or down.

Intrinsics: ViZDoom renders a 90 degree horizontal field of view on 4:3 screens with ZDoom's vertical pixel
stretch of 1.2 (Doom's 320x200 pixels shown on a 4:3 screen), so fx = W / 2 and fy = 1.2 fx in screen pixels;
both are rescaled to the output size. Only 4:3 screen modes are used, where this holds.

Maps: each WAD's maps are read from its lump directory (ViZDoom hangs when asked for a map that does not exist).
freedoom1 E4M1-E4M9 and freedoom2 MAP25-MAP32 are held out; every other map is for training.

Exactness: `reset(seed, split)` then the same controls reproduce the same frames bit for bit (ViZDoom's
save/load does not, see docs), which evaluation uses for counterfactual ground truth.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from astra.actions.modalities import KEYBOARD_KEYS
from astra.errors import AstraError
from astra.worlds import EpisodeEnded
from astra.worlds.base import SPLITS, Policy, World

DOOM_TICRATE = 35  # Doom tics per second
HORIZONTAL_FOV_DEGREES = 90.0
PIXEL_STRETCH = 1.2  # ZDoom's vertical stretch on 4:3 screens
# Running speed: Doom's terminal speed on flat ground from its run thrust (forwardmove 50 * 2048 / 65536 units
# per tic^2) and friction (0xE800 / 0x10000 kept per tic): 16.7 units per tic. Measured on MAP01 (start path,
# tests/worlds/test_doom.py): median 16.6 units per tic over the frames 8-24 of holding forward.
RUN_THRUST = 50 * 2048 / 65536
GROUND_FRICTION = 0xE800 / 0x10000
RUN_UNITS_PER_TIC = RUN_THRUST / (1 - GROUND_FRICTION)
# A held turn key turns 1280/65536 of a circle per tic at running speed (after 6 slow tics): 7.03 degrees.
KEY_TURN_DEGREES_PER_TIC = 1280 * 360 / 65536
WARMUP_TICS = 8  # ViZDoom ignores turning for the first tics of an episode; spent before the first frame
START_JITTER_MAX_TICS = 12  # random forward/strafe tics after the random start yaw
MOUSE_LIMIT_DEGREES = 90.0  # one frame's mouse turn must stay below this (validation)

HELDOUT_MAPS: dict[str, tuple[str, ...]] = {
    "freedoom1": tuple(f"E4M{i}" for i in range(1, 10)),
    "freedoom2": tuple(f"MAP{i:02d}" for i in range(25, 33)),
}
_MAP_MARKER_NEXT = ("THINGS", "TEXTMAP")  # a map's marker lump is followed by its THINGS (or UDMF TEXTMAP)


def wad_path(wad: str | os.PathLike) -> Path:
    """A bundled WAD by name ("freedoom1", "freedoom2") or a path to a WAD file."""
    import vizdoom

    name = str(wad)
    bundled = Path(vizdoom.__file__).parent / f"{name}.wad"
    if bundled.is_file():
        return bundled
    path = Path(wad)
    if path.is_file():
        return path
    raise AstraError(f"WAD {name!r} not found: neither a file nor one of ViZDoom's bundled WADs (freedoom1, freedoom2)")


def list_maps(path: str | os.PathLike) -> list[str]:
    """Names of the maps in a WAD, read from its lump directory: 12-byte header ("IWAD"/"PWAD", lump count,
    directory offset), then 16-byte entries (offset, size, 8-byte name)."""
    path = Path(path)
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] not in (b"IWAD", b"PWAD"):
            raise AstraError(f"{path}: not a WAD file (header {header[:4]!r}, expected b'IWAD' or b'PWAD')")
        num_lumps, directory_offset = struct.unpack("<ii", header[4:])
        handle.seek(directory_offset)
        directory = handle.read(16 * num_lumps)
    if num_lumps < 0 or len(directory) != 16 * num_lumps:
        raise AstraError(f"{path}: truncated WAD directory ({num_lumps} lumps at offset {directory_offset})")
    names = [directory[16 * i + 8 : 16 * i + 16].rstrip(b"\0").decode("ascii", "replace") for i in range(num_lumps)]
    return [names[i] for i in range(num_lumps - 1) if names[i + 1] in _MAP_MARKER_NEXT]


def split_maps(wads: Sequence[str], split: str, only: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(wad, map) pairs of `split`; `only` restricts to these map names (each must exist in some WAD)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pairs = [(wad, name) for wad in wads for name in list_maps(wad_path(wad))]
    if only is not None:
        only = [name.upper() for name in only]
        missing = sorted(set(only) - {name for _, name in pairs})
        if missing:
            raise AstraError(f"map(s) {', '.join(missing)} not in WAD(s) {', '.join(map(str, wads))}")
        pairs = [(wad, name) for wad, name in pairs if name in only]
    # WAD file names vary in case (FREEDOOM2.WAD): a case-sensitive look-up would hold nothing out
    heldout = {(wad, name) for wad, name in pairs if name in HELDOUT_MAPS.get(Path(str(wad)).stem.lower(), ())}
    chosen = [pair for pair in pairs if (pair in heldout) == (split == "heldout")]
    if not chosen:
        raise AstraError(f"no {split} maps in WAD(s) {', '.join(map(str, wads))} (maps={only})")
    return chosen


def _screen_resolution(height: int, width: int):
    """The smallest 4:3 ViZDoom screen mode at least (height, width)."""
    import vizdoom

    modes = []
    for name in dir(vizdoom.ScreenResolution):
        match = re.fullmatch(r"RES_(\d+)X(\d+)", name)
        if match:
            mode_width, mode_height = int(match[1]), int(match[2])
            if mode_width * 3 == mode_height * 4 and mode_width >= width and mode_height >= height:
                modes.append((mode_width * mode_height, mode_width, mode_height, name))
    if not modes:
        raise AstraError(f"no 4:3 ViZDoom screen mode covers {height}x{width}")
    _, mode_width, mode_height, name = min(modes)
    return getattr(vizdoom.ScreenResolution, name), mode_height, mode_width


def doom_pose(x: float, y: float, z: float, angle_degrees: float, pitch_degrees: float) -> np.ndarray:
    """Camera-to-world 4x4 (OpenCV camera axes) from Doom's camera position, yaw and pitch (see module doc)."""
    yaw, pitch = np.radians(angle_degrees), np.radians(pitch_degrees)
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, (x, y, z)
    return pose


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(height), int(width)


class DoomWorld(World):
    name = "doom"
    modality = "keyboard_mouse"
    control_columns = KEYBOARD_KEYS + ("mouse_dx",)
    control_width = len(control_columns)

    def __init__(
        self,
        size: int | Sequence[int] = 64,
        frame_skip: int = 2,
        wad: str | Sequence[str] = "freedoom2",
        maps: Sequence[str] | None = None,
        start_jitter: bool = True,
    ):
        """`wad`: one bundled WAD name or path, or several; `maps`: restrict episodes to these map names;
        `start_jitter`: start at a random yaw and a few random steps away from the map's player start."""
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        self.height, self.width = _size_pair(size)
        self.frame_skip = int(frame_skip)
        self.fps = DOOM_TICRATE / self.frame_skip
        self.wads = (wad,) if isinstance(wad, (str, os.PathLike)) else tuple(wad)
        self.maps = None if maps is None else tuple(maps)
        self.start_jitter = start_jitter
        known_maps = {name for w in self.wads for name in list_maps(wad_path(w))}  # fails now on a bad WAD
        missing = sorted({m.upper() for m in self.maps or ()} - known_maps)
        if missing:
            raise AstraError(f"map(s) {', '.join(missing)} not in WAD(s) {', '.join(map(str, self.wads))}")
        self._resolution, self._screen_height, self._screen_width = _screen_resolution(self.height, self.width)
        self._game = None
        self._game_wad: Path | None = None
        self._episode: dict[str, Any] = {}
        self._last_control = np.zeros(self.control_width, np.float32)
        self._frame: np.ndarray | None = None
        self._camera = np.zeros(5)
        self._depth: np.ndarray | None = None
        # CAMERA_POSITION_X/Y/Z, CAMERA_ANGLE, CAMERA_PITCH, POSITION_X/Y/Z, ANGLE, PITCH of the current frame
        self.game_variables = np.zeros(10)

    # ----------------------------------------------------------------------------------------------- game
    def _start_game(self, wad: Path) -> None:
        import vizdoom

        self.close()
        game = vizdoom.DoomGame()
        game.set_doom_game_path(str(wad))
        game.set_screen_resolution(self._resolution)
        game.set_screen_format(vizdoom.ScreenFormat.RGB24)
        game.set_render_hud(False)
        game.set_render_weapon(False)
        game.set_render_crosshair(False)
        game.set_render_messages(False)
        game.set_render_screen_flashes(False)
        game.set_sound_enabled(False)
        game.set_window_visible(False)
        game.set_depth_buffer_enabled(True)  # for the exploration policy (where is open space)
        game.set_episode_timeout(0)  # no timeout
        game.set_mode(vizdoom.Mode.PLAYER)
        game.add_game_args("-nomonsters +sv_cheats 1 +cl_run 1")
        button = vizdoom.Button
        game.set_available_buttons(
            [button.MOVE_FORWARD, button.MOVE_BACKWARD, button.MOVE_LEFT, button.MOVE_RIGHT,
             button.TURN_LEFT, button.TURN_RIGHT, button.TURN_LEFT_RIGHT_DELTA]
        )
        variable = vizdoom.GameVariable
        game.set_available_game_variables(
            [variable.CAMERA_POSITION_X, variable.CAMERA_POSITION_Y, variable.CAMERA_POSITION_Z,
             variable.CAMERA_ANGLE, variable.CAMERA_PITCH,
             variable.POSITION_X, variable.POSITION_Y, variable.POSITION_Z, variable.ANGLE, variable.PITCH]
        )
        game.init()
        self._game, self._game_wad = game, wad

    def _advance(self, buttons: list[float], tics: int) -> None:
        self._game.make_action(buttons, tics)
        if self._game.is_episode_finished():
            raise EpisodeEnded(f"doom: the episode on {self._episode.get('map')} ended (the player reached an exit)")

    def _observe(self) -> np.ndarray:
        state = self._game.get_state()
        self.game_variables = np.asarray(state.game_variables, dtype=np.float64)
        self._camera = self.game_variables[:5]
        self._depth = state.depth_buffer
        screen = Image.fromarray(state.screen_buffer)
        if screen.size != (self.width, self.height):
            screen = screen.resize((self.width, self.height), Image.Resampling.BOX)  # area average
        self._frame = np.asarray(screen, dtype=np.uint8)
        return self._frame

    # --------------------------------------------------------------------------------------------- World
    def reset(self, seed: int, split: str = "train") -> np.ndarray:
        rng = np.random.default_rng(seed)
        pairs = split_maps(self.wads, split, self.maps)
        wad, map_name = pairs[int(rng.integers(len(pairs)))]
        path = wad_path(wad)
        if self._game is None or path != self._game_wad:
            self._start_game(path)
        self._game.set_doom_map(map_name)
        self._game.set_seed(int(seed) % 2**31)
        self._game.new_episode()
        self._game.send_game_command("god")
        self._episode = {"wad": Path(str(wad)).stem, "map": map_name, "seed": int(seed), "split": split}
        idle = [0.0] * self.control_width
        self._advance(idle, WARMUP_TICS)
        if self.start_jitter:  # a random yaw (turned in one tic), then a few random walking tics
            self._advance(idle[:-1] + [float(rng.uniform(-180.0, 180.0))], 1)
            move = idle.copy()
            move[int(rng.integers(4))] = 1.0
            self._advance(move, 1 + int(rng.integers(START_JITTER_MAX_TICS)))
            self._advance(idle, WARMUP_TICS)  # let the walk come to rest
        self._last_control = np.zeros(self.control_width, np.float32)
        return self._observe()

    def step(self, control: np.ndarray) -> np.ndarray:
        if self._game is None:
            raise AstraError("doom: call reset(seed, split) before step()")
        control = self.check_control(control)
        buttons = [float(v) for v in control[:-1]] + [float(control[-1]) / self.frame_skip]  # delta is per tic
        self._advance(buttons, self.frame_skip)
        self._last_control = control
        return self._observe()

    def check_control(self, control: Any) -> np.ndarray:
        """A valid native control as float32 [7]; raises ValueError naming what is wrong."""
        values = np.asarray(control, dtype=np.float32)
        if values.shape != (self.control_width,):
            raise ValueError(
                f"doom: control must have shape ({self.control_width},) = ({', '.join(self.control_columns)}), "
                f"got {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"doom: control has a NaN or inf: {values.tolist()}")
        keys = values[:-1]
        if not np.isin(keys, (0.0, 1.0)).all():
            raise ValueError(f"doom: key states must be 0 or 1, got {keys.tolist()}")
        if abs(values[-1]) >= MOUSE_LIMIT_DEGREES:
            raise ValueError(f"doom: mouse_dx {values[-1]} degrees per frame is beyond +-{MOUSE_LIMIT_DEGREES}")
        return values

    def depth(self) -> np.ndarray:
        """ViZDoom's depth buffer of the current frame (uint8 [screen H, W], larger = farther, saturating)."""
        return self._depth

    def action_row(self) -> np.ndarray:
        return np.concatenate([self._last_control, [0.0]]).astype(np.float32)

    def still_control(self) -> np.ndarray:
        return np.zeros(self.control_width, np.float32)  # no button, no mouse

    def pose(self) -> np.ndarray:
        return doom_pose(*self._camera)

    def intrinsics(self) -> np.ndarray:
        focal_x = self._screen_width / 2 / np.tan(np.radians(HORIZONTAL_FOV_DEGREES) / 2)
        scale_x, scale_y = self.width / self._screen_width, self.height / self._screen_height
        return np.array(
            [
                [focal_x * scale_x, 0.0, self.width / 2],
                [0.0, focal_x * PIXEL_STRETCH * scale_y, self.height / 2],
                [0.0, 0.0, 1.0],
            ]
        )

    def episode_meta(self) -> dict[str, Any]:
        return {
            "world": self.name,
            **self._episode,
            "frame_skip": self.frame_skip,
            "screen": [self._screen_width, self._screen_height],
            "translation_scale": RUN_UNITS_PER_TIC * self.frame_skip,
            "mouse_scale": KEY_TURN_DEGREES_PER_TIC * self.frame_skip,
        }

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game, self._game_wad = None, None


# ------------------------------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class ExplorerConfig:
    """Probabilities and durations of the human-like exploration policy (frames at frame_skip 2)."""

    mean_hold_frames: float = 10.0  # key holds last Geometric(1 / mean) frames
    spin_frames: tuple[int, int] = (24, 96)  # a spin holds one turn this long (min, max; uniform), for seconds
    stuck_frames: int = 6  # moving keys held this long with almost no motion = stuck
    stuck_distance: float = 8.0  # Doom units over `stuck_frames` frames
    mouse_sweep_degrees: tuple[float, float] = (1.0, 8.0)  # per-frame mouse turn of a sweep
    reverse_probability: float = 0.15  # after a hold, do the opposite next
    near_depth: float = 14.0  # depth-buffer value of a wall right ahead: turn away before bumping into it
    open_depth: float = 22.0  # depth-buffer value ahead that counts as open space: stop turning away
    turn_away_frames: tuple[int, int] = (2, 12)  # min and max frames of a turn away
    turn_away_mouse_degrees: tuple[float, float] = (10.0, 25.0)  # a turn away flicks the mouse at this rate
    # Behaviours and their weights; forward-biased like a player exploring a level.
    behaviours: tuple[tuple[str, float], ...] = (
        ("forward", 0.30),
        ("forward_turn", 0.12),
        ("forward_mouse", 0.12),
        ("forward_strafe", 0.06),
        ("stop", 0.07),
        ("back", 0.06),
        ("strafe", 0.09),
        ("turn", 0.09),
        ("mouse", 0.09),
        # A player holds a turn for seconds to look around; without these, holds averaged 7 frames and a model
        # trained on them saturated the picture within ~30 frames of a held turn key (docs/results.md, session 10).
        ("spin", 0.08),
    )


_KEY = {name: index for index, name in enumerate(KEYBOARD_KEYS)}
_MOUSE = len(KEYBOARD_KEYS)


class DoomExplorer(Policy):
    """Holds key combinations for geometric durations, stops, reverses, sweeps the mouse, spins (one turn held for
    seconds); when stuck or about to walk into a wall, turns towards the more open side (from the depth buffer)
    until the way ahead is open."""

    name = "doom-explorer"

    def __init__(self, seed: int = 0, config: ExplorerConfig = ExplorerConfig()):
        self.config = config
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._control = np.zeros(len(KEYBOARD_KEYS) + 1, np.float32)
        self._frames_left = 0
        self._behaviour = "stop"
        self._turned = 0
        self._recent_positions: list[np.ndarray] = []

    def _hold_frames(self) -> int:
        if self._behaviour == "spin":
            low, high = self.config.spin_frames
            return int(self.rng.integers(low, high + 1))
        return int(self.rng.geometric(1.0 / self.config.mean_hold_frames))

    def _side(self) -> int:
        return int(self.rng.choice((-1, 1)))  # -1 = left, +1 = right

    def _make(self, behaviour: str, side: int) -> np.ndarray:
        control = np.zeros(len(KEYBOARD_KEYS) + 1, np.float32)
        if behaviour.startswith("forward"):
            control[_KEY["forward"]] = 1
        if behaviour == "back":
            control[_KEY["back"]] = 1
        if behaviour in ("strafe", "forward_strafe"):
            control[_KEY["strafe_right" if side > 0 else "strafe_left"]] = 1
        if behaviour in ("turn", "forward_turn"):
            control[_KEY["turn_right" if side > 0 else "turn_left"]] = 1
        if behaviour == "spin":  # the turn key or a steady mouse sweep, standing or walking, half each
            if self.rng.random() < 0.5:
                control[_KEY["turn_right" if side > 0 else "turn_left"]] = 1
            else:
                control[_MOUSE] = side * self.rng.uniform(*self.config.mouse_sweep_degrees)
            control[_KEY["forward"]] = float(self.rng.random() < 0.5)
        if behaviour in ("mouse", "forward_mouse"):
            control[_MOUSE] = side * self.rng.uniform(*self.config.mouse_sweep_degrees)
        if behaviour == "turn_away":
            control[_MOUSE] = side * self.rng.uniform(*self.config.turn_away_mouse_degrees)
        return control

    def _opposite(self) -> np.ndarray:
        control = self._control.copy()
        for a, b in (("forward", "back"), ("strafe_left", "strafe_right"), ("turn_left", "turn_right")):
            control[[_KEY[a], _KEY[b]]] = control[[_KEY[b], _KEY[a]]]
        control[_MOUSE] = -control[_MOUSE]
        return control

    def _stuck(self, world: World) -> bool:
        pose = world.pose()
        if pose is None:
            return False
        self._recent_positions = (self._recent_positions + [pose[:3, 3]])[-self.config.stuck_frames :]
        moving = self._control[[_KEY["forward"], _KEY["back"], _KEY["strafe_left"], _KEY["strafe_right"]]].any()
        full = len(self._recent_positions) == self.config.stuck_frames
        travelled = np.linalg.norm(self._recent_positions[-1] - self._recent_positions[0]) if full else np.inf
        return bool(moving and travelled < self.config.stuck_distance)

    @staticmethod
    def _free_space(world: World) -> np.ndarray | None:
        """Median depth ahead in the left, centre and right thirds of the view (None without a depth buffer)."""
        depth = getattr(world, "depth", lambda: None)()
        if depth is None:
            return None
        height, width = depth.shape
        band = depth[height * 3 // 8 : height * 5 // 8]
        return np.array([np.median(band[:, i * width // 3 : (i + 1) * width // 3]) for i in range(3)])

    def _start_turn_away(self, free: np.ndarray | None) -> None:
        side = self._side() if free is None or free[0] == free[2] else (1 if free[2] > free[0] else -1)
        self._behaviour = "turn_away"
        self._control = self._make("turn_away", side)
        self._frames_left = self.config.turn_away_frames[1]
        self._turned = 0
        self._recent_positions = []

    def __call__(self, world: World, frame_index: int) -> np.ndarray:
        free = self._free_space(world)
        wall_ahead = free is not None and self._control[_KEY["forward"]] > 0 and free[1] < self.config.near_depth
        if self._behaviour == "turn_away":
            self._turned += 1
            turned_enough = self._turned >= self.config.turn_away_frames[0]
            if free is not None and turned_enough and free[1] > self.config.open_depth:
                self._frames_left = 0  # facing open space again
        if (self._stuck(world) or wall_ahead) and self._behaviour != "turn_away":
            self._start_turn_away(free)
        elif self._frames_left <= 0:
            if self._behaviour != "turn_away" and self.rng.random() < self.config.reverse_probability:
                self._control = self._opposite()
            else:
                names, weights = zip(*self.config.behaviours)
                self._behaviour = str(self.rng.choice(names, p=np.asarray(weights) / sum(weights)))
                self._control = self._make(self._behaviour, self._side())
            self._frames_left = self._hold_frames()
        self._frames_left -= 1
        return self._control.copy()


def make_policy(seed: int) -> Policy:
    return DoomExplorer(seed)
