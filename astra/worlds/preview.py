"""Look at recorded episodes: a contact-sheet PNG and/or an animated GIF, with each frame's action drawn on it.

Row t of `actions` (the input applied going from frame t to t + 1) is drawn on frame t:
- keyboard_mouse: a Q W E / A S D key glyph (turn left, forward, turn right / strafe left, back, strafe right),
  pressed keys filled, and the mouse yaw as a horizontal arrow (length relative to the episode's mouse_scale);
- camera7 / camera12 / vehicle7: a top-down dial: the translation (x right, z forward = up) as an arrow and
  the yaw as a red tick (exaggerated YAW_GAIN times);
- robot7: the end-effector command as an arrow in the base xy plane (x = up, y = left), dz as a bar on the
  side, and the gripper as a circle (filled = closed).
Arrow lengths are in scaled units (docs/actions.md), one unit = the full radius: pose rows are already scaled in
episodes, while robot7 translations and mouse deltas are divided here by the episode's translation_scale and
mouse_scale; per-latent actions (`astra generate`) are scaled already throughout (`scaled=True`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from astra.actions.modalities import KEYBOARD_KEYS
from astra.data.format import Episode, list_episodes, read_episode
from astra.files import atomic_path

KEY_LAYOUT = (("turn_left", "forward", "turn_right"), ("strafe_left", "back", "strafe_right"))
YAW_GAIN = 5.0  # a 9 degree turn shows as a 45 degree tick
LABEL_HEIGHT = 12  # pixels of the episode-name strip above each contact-sheet row
ON, OFF, ARROW, TICK, OUTLINE = (255, 220, 0), (90, 90, 90), (0, 255, 255), (255, 60, 60), (0, 0, 0)


MAX_COLUMNS, MAX_SCALE = 64, 16  # frames per episode on a contact sheet; upscaling of each frame


@dataclass(frozen=True)
class PreviewConfig:
    episodes: int = 4  # how many episodes (the first ones, sorted by name)
    columns: int = 8  # frames per episode on the contact sheet, evenly spaced
    scale: int = 2  # nearest-neighbour upscaling so that the glyphs are legible on 64x64 frames

    def __post_init__(self) -> None:
        if min(self.episodes, self.columns, self.scale) < 1:
            raise ValueError(f"episodes, columns and scale must be >= 1, got {self}")
        if self.columns > MAX_COLUMNS or self.scale > MAX_SCALE:  # the sheet is allocated whole
            raise ValueError(f"--columns must be <= {MAX_COLUMNS} and --scale <= {MAX_SCALE}, got {self}")


def _arrow(draw: ImageDraw.ImageDraw, start: np.ndarray, end: np.ndarray, color, width: int) -> None:
    draw.line([tuple(start), tuple(end)], fill=color, width=width)
    direction = end - start
    length = float(np.hypot(*direction))
    if length < 1:
        return
    unit, normal = direction / length, np.array([-direction[1], direction[0]]) / length
    head = max(2.0, min(length / 2, 2.0 * width + 2))
    base = end - head * unit
    draw.polygon([tuple(end), tuple(base + head / 2 * normal), tuple(base - head / 2 * normal)], fill=color)


def _yaw_of_rotation(rotation: np.ndarray) -> float:
    """Yaw (radians, positive = turn right) of a rotation in OpenCV camera axes: where the forward axis goes."""
    return float(np.arctan2(rotation[0, 2], rotation[2, 2]))


def _quaternion_rotation(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / max(np.linalg.norm(q), 1e-12)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _draw_keys(draw, row: np.ndarray, size: int) -> None:
    cell = max(5, size // 10)
    left, top = cell // 2, size - cell // 2 - 2 * cell
    for r, names in enumerate(KEY_LAYOUT):
        for c, name in enumerate(names):
            box = [left + c * cell, top + r * cell, left + (c + 1) * cell - 2, top + (r + 1) * cell - 2]
            pressed = row[KEYBOARD_KEYS.index(name)] > 0.5
            draw.rectangle(box, fill=ON if pressed else OFF, outline=OUTLINE)
    mouse = float(row[len(KEYBOARD_KEYS)])
    if mouse != 0:
        center = np.array([size * 3 / 4, size - cell * 1.5])
        length = np.sign(mouse) * max(cell / 2, min(abs(mouse), 1.0) * size / 4)  # always visible when moving
        _arrow(draw, center, center + np.array([length, 0.0]), ARROW, max(1, cell // 3))


def _draw_dial(draw, translation_xz: np.ndarray, yaw: float, size: int) -> None:
    radius = max(6, size // 8)
    center = np.array([radius + 3.0, size - radius - 3.0])
    draw.ellipse([*(center - radius), *(center + radius)], outline=OFF, width=max(1, size // 64))
    magnitude = float(np.hypot(*translation_xz))
    if magnitude > 1e-9:
        direction = np.array([translation_xz[0], -translation_xz[1]]) / magnitude  # screen: x right, forward up
        _arrow(draw, center, center + direction * radius * min(1.0, magnitude), ARROW, max(1, size // 48))
    angle = np.clip(yaw * YAW_GAIN, -np.pi, np.pi)
    tip = center + radius * np.array([np.sin(angle), -np.cos(angle)])
    draw.line([tuple(center + 0.6 * (tip - center)), tuple(tip)], fill=TICK, width=max(2, size // 32))


def _draw_robot(draw, row: np.ndarray, size: int) -> None:
    radius = max(6, size // 8)
    center = np.array([radius + 3.0, size - radius - 3.0])
    xy = row[:2]
    if np.hypot(*xy) > 1e-9:  # base frame: x away from the robot = up on screen, y left = left
        _arrow(draw, center, center + radius * np.clip(np.array([-xy[1], -xy[0]]), -1, 1), ARROW, max(1, size // 48))
    bar_x = center[0] + radius + 4
    dz = float(np.clip(row[2], -1, 1)) * radius
    draw.line([(bar_x, center[1]), (bar_x, center[1] - dz)], fill=ARROW, width=max(2, size // 32))
    grip = np.array([size - radius - 3.0, size - radius - 3.0])
    closed = row[6] > 0.5
    draw.ellipse([*(grip - radius / 2), *(grip + radius / 2)], fill=ON if closed else None, outline=ON, width=2)


def scaled_row(row: np.ndarray, modality: str, meta: dict) -> np.ndarray:
    """An episode's per-frame row in the scaled units the glyphs draw: robot7 xyz / translation_scale, the mouse /
    mouse_scale. Pose rows (camera7, camera12, vehicle7) are recorded scaled already and come back unchanged."""
    row = np.array(row, dtype=np.float64)
    if modality == "keyboard_mouse":
        row[len(KEYBOARD_KEYS) :] /= float(meta.get("mouse_scale", 10.0)) or 10.0
    elif modality == "robot7":
        row[:3] /= float(meta.get("translation_scale", 1.0)) or 1.0
    return row


def draw_action(
    frame: np.ndarray, row: np.ndarray, modality: str, meta: dict, scale: int = 2, scaled: bool = False
) -> Image.Image:
    """The frame upscaled `scale` times with the action row drawn on it. `row`: an episode's per-frame row, or with
    `scaled` a row already in scaled units (a per-latent action of `astra generate`), drawn as it is."""
    image = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    size = min(image.size)
    row = np.asarray(row, dtype=np.float64) if scaled else scaled_row(row, modality, meta)
    if modality == "keyboard_mouse":
        _draw_keys(draw, row, size)
    elif modality in ("camera7", "vehicle7"):
        _draw_dial(draw, row[[0, 2]], _yaw_of_rotation(_quaternion_rotation(row[3:7])), size)
    elif modality == "camera12":
        matrix = row.reshape(3, 4)
        _draw_dial(draw, matrix[[0, 2], 3], _yaw_of_rotation(matrix[:, :3]), size)
    elif modality == "robot7":
        _draw_robot(draw, row, size)
    else:
        raise ValueError(f"preview: no action glyph for modality {modality!r}")
    return image


def _load(root: Path, count: int) -> list[tuple[str, Episode]]:
    paths = list_episodes(root)[:count]
    if not paths:
        raise FileNotFoundError(f"no complete episodes (folders with meta.json) under {root}")
    return [(path.name, read_episode(path)) for path in paths]


def contact_sheet(episodes: Sequence[tuple[str, Episode]], config: PreviewConfig) -> Image.Image:
    """One row per episode: `columns` evenly spaced frames with their actions, under the episode's name."""
    rows = []
    for name, episode in episodes:
        indices = np.unique(np.linspace(0, episode.num_frames - 1, config.columns).round().astype(int))
        cells = [
            draw_action(episode.frames[i], episode.actions[i], episode.modality, episode.meta, config.scale)
            for i in indices
        ]
        cell_width, cell_height = cells[0].size
        row = Image.new("RGB", (cell_width * config.columns, cell_height + LABEL_HEIGHT))
        draw = ImageDraw.Draw(row)
        draw.text((2, 0), f"{name}  (frames {', '.join(map(str, indices))})", fill=(255, 255, 255))
        for column, cell in enumerate(cells):
            row.paste(cell, (column * cell_width, LABEL_HEIGHT))
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)))
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    return sheet


def animation(episodes: Sequence[tuple[str, Episode]], config: PreviewConfig) -> list[Image.Image]:
    """The episodes side by side, one GIF frame per video frame (as long as the shortest episode)."""
    length = min(episode.num_frames for _, episode in episodes)
    frames = []
    for t in range(length):
        cells = [draw_action(e.frames[t], e.actions[t], e.modality, e.meta, config.scale) for _, e in episodes]
        canvas = Image.new("RGB", (sum(c.width for c in cells), max(c.height for c in cells)))
        left = 0
        for cell in cells:
            canvas.paste(cell, (left, 0))
            left += cell.width
        frames.append(canvas)
    return frames


def preview(
    root: str | os.PathLike, outs: Sequence[str | os.PathLike], config: PreviewConfig = PreviewConfig()
) -> list[Path]:
    """Write each of `outs` (.png: contact sheet, .gif: animation); returns the paths written."""
    outs = [Path(out) for out in outs]
    for out in outs:
        if out.suffix.lower() not in (".png", ".gif"):
            raise ValueError(f"preview output {out} must end in .png or .gif")
    episodes = _load(Path(root), config.episodes)
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as temp:
            if out.suffix.lower() == ".png":
                contact_sheet(episodes, config).save(temp)
            else:
                frames = animation(episodes, config)
                duration = round(1000 / episodes[0][1].fps)
                frames[0].save(temp, save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return outs
