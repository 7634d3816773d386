"""Compact action strings and JSON action files -> per-latent-frame actions for `astra generate`.

Grammar (docs/actions.md): comma-separated tokens `CHORD*COUNT`, COUNT = number of VIDEO frames (default 1);
the counts must add up to a multiple of 4 (4 video frames per latent frame) and to at most MAX_ACTION_FRAMES.
- keyboard_mouse: CHORD = key letters w s a d q e (forward, back, strafe_left, strafe_right, turn_left,
  turn_right), the words `left`/`right` (= q/e), an optional mouse delta per frame `m(DX,DY)`, or `-` (nothing).
  Example: `w*16,a*8,wd*8,qm(2,0)*4,-*4`.
- camera7 / camera12 / vehicle7: CHORD = words joined by `+` from POSE_WORDS, or `-`. Example:
  `forward*16,forward+turn_left*8`.
- robot7: CHORD = words joined by `+` from ROBOT_WORDS; `close`/`open` set the gripper until changed.
A whole string that names a preset (astra/actions/presets.py) gives that preset instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from astra.actions.align import FRAMES_PER_LATENT, identity_action, latent_actions
from astra.actions.modalities import KEYBOARD_KEYS, get_modality
from astra.actions.presets import MAX_ACTION_FRAMES, PRESETS, get_preset, render_motion
from astra.errors import AstraError

DEFAULT_PRESET_LATENT_FRAMES = 24  # the paper's demos: 3 chunks of 8 latent frames
KEY_LETTERS = dict(zip("wsadqe", KEYBOARD_KEYS))
KEY_WORDS = {"left": "turn_left", "right": "turn_right"}
POSE_WORDS = {
    "forward": {"forward": 1},
    "back": {"forward": -1},
    "left": {"right": -1},
    "right": {"right": 1},
    "up": {"up": 1},
    "down": {"up": -1},
    "turn_left": {"yaw_left": 1},
    "turn_right": {"yaw_left": -1},
    "look_up": {"pitch_up": 1},
    "look_down": {"pitch_up": -1},
}
ROBOT_WORDS = {
    "forward": {"dx": 1},
    "back": {"dx": -1},
    "left": {"dy": 1},
    "right": {"dy": -1},
    "up": {"dz": 1},
    "down": {"dz": -1},
    "yaw_left": {"dyaw": 1},
    "yaw_right": {"dyaw": -1},
}
GRIPPER_WORDS = {"open": 0.0, "close": 1.0}
TOKEN = re.compile(r"\s*(?P<chord>(?:\([^)]*\)|[^*,(])*?)\s*(?:\*\s*(?P<count>[^,]*?)\s*)?(?:,|$)")
MOUSE = re.compile(r"m\(([^)]*)\)")
MOUSE_DELTA = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*,\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*")


class ActionParseError(AstraError, ValueError):
    """An action string or file is malformed; the message gives the position of the bad token."""


def _keyboard_row(chord: str, where: str) -> np.ndarray:
    row = np.zeros(len(KEYBOARD_KEYS) + 2, np.float32)
    if chord == "-":
        return row
    mouse = MOUSE.search(chord)
    if mouse:
        delta = MOUSE_DELTA.fullmatch(mouse.group(1))
        if not delta:
            raise ActionParseError(f"{where}: mouse delta {mouse.group(0)!r} must be m(DX,DY), two numbers: m(2,-0.5)")
        row[-2:] = [float(delta.group(1)), float(delta.group(2))]
        chord = chord[: mouse.start()] + chord[mouse.end() :]
    keys = [KEY_WORDS[chord]] if chord in KEY_WORDS else []
    for letter in "" if keys else chord:
        if letter not in KEY_LETTERS:
            raise ActionParseError(f"{where}: unknown key {letter!r}; keys are w s a d q e, left, right, m(dx,dy), -")
        keys.append(KEY_LETTERS[letter])
    for key in keys:
        row[KEYBOARD_KEYS.index(key)] = 1.0
    return row


def _word_motion(chord: str, words: dict[str, dict], where: str) -> tuple[dict, float | None]:
    """Sum of the motions of `a+b+...`; also the gripper state if the chord sets one."""
    motion: dict[str, float] = {}
    gripper = None
    for word in [] if chord == "-" else chord.split("+"):
        word = word.strip()
        if word in GRIPPER_WORDS and words is ROBOT_WORDS:
            gripper = GRIPPER_WORDS[word]
        elif word in words:
            for intent, value in words[word].items():
                motion[intent] = motion.get(intent, 0.0) + value
        else:
            known = list(words) + (list(GRIPPER_WORDS) if words is ROBOT_WORDS else [])
            raise ActionParseError(f"{where}: unknown word {word!r}; known: {', '.join(known)}, -")
    return motion, gripper


def parse_frame_rows(text: str, modality: str) -> np.ndarray:
    """An action string -> per-VIDEO-frame rows float32 [N, width] (relative motions for pose modalities)."""
    get_modality(modality)
    rows: list[np.ndarray] = []
    gripper = 0.0
    position = 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:  # a "(" with no ")" before the end
            raise ActionParseError(f"action string position {position} ({text[position:]!r}): unclosed '('")
        chord, count_text = match.group("chord"), match.group("count")
        where = f"action string position {position} ({text[position:match.end()].strip(', ')!r})"
        if not chord:
            raise ActionParseError(f"{where}: empty token")
        if count_text is not None and not re.fullmatch(r"[0-9]+", count_text):
            raise ActionParseError(f"{where}: count {count_text!r} must be a positive whole number of video frames")
        digits = "1" if count_text is None else count_text.lstrip("0") or "0"
        # more digits than the limit has is over it, and int() would refuse some 4300 of them with a raw ValueError
        count = MAX_ACTION_FRAMES + 1 if len(digits) > len(str(MAX_ACTION_FRAMES)) else int(digits)
        if count < 1:
            raise ActionParseError(f"{where}: count must be at least 1")
        if len(rows) + count > MAX_ACTION_FRAMES:
            raise ActionParseError(
                f"{where}: the counts add up to more than MAX_ACTION_FRAMES = {MAX_ACTION_FRAMES:,} video frames"
            )
        if modality == "keyboard_mouse":
            row = _keyboard_row(chord, where)
        elif modality == "robot7":
            motion, new_gripper = _word_motion(chord, ROBOT_WORDS, where)
            gripper = gripper if new_gripper is None else new_gripper
            row = render_motion(motion | {"gripper": gripper}, modality, 1 / FRAMES_PER_LATENT)
        else:
            row = render_motion(_word_motion(chord, POSE_WORDS, where)[0], modality, 1 / FRAMES_PER_LATENT)
        rows += [row] * count
        position = match.end()
    if not rows:
        raise ActionParseError("empty action string")
    return np.stack(rows)


def frame_rows_to_latent(rows: np.ndarray, modality: str, where: str = "actions") -> np.ndarray:
    """Per-frame rows [4F, width] for the frames after the start image -> per-latent actions [F, width]."""
    width = get_modality(modality).width
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ActionParseError(f"{where}: {modality} rows must have shape [N, {width}], got {list(rows.shape)}")
    if len(rows) == 0 or len(rows) % FRAMES_PER_LATENT:
        raise ActionParseError(
            f"{where}: {len(rows)} video frames of actions; need a positive multiple of {FRAMES_PER_LATENT} "
            f"(each latent frame covers {FRAMES_PER_LATENT} video frames)"
        )
    # one more frame than rows: frame 0 is the start image; the row after the last frame is never used
    padded = np.concatenate([rows, identity_action(modality)[None]])
    try:
        return latent_actions(modality, padded, where=where)[1:]
    except ValueError as error:
        raise ActionParseError(str(error)) from None


def load_action_file(path: str | Path, modality: str) -> np.ndarray:
    """JSON: a list of per-frame rows, or {"modality": ..., "frames": [rows]} -> per-latent actions [F, width]."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ActionParseError(f"{path}: not valid JSON ({error})") from None
    except UnicodeDecodeError:
        raise ActionParseError(f"{path}: not a text file (expected JSON)") from None
    if isinstance(content, dict):
        if content.get("modality", modality) != modality:
            raise ActionParseError(f"{path}: actions are for modality {content['modality']!r}, expected {modality!r}")
        if "frames" not in content:
            raise ActionParseError(f"{path}: expected a key 'frames' with a list of per-frame rows")
        content = content["frames"]
    try:
        rows = np.asarray(content, dtype=np.float32)
    except (TypeError, ValueError):
        raise ActionParseError(f"{path}: 'frames' must be a list of equal-length lists of numbers") from None
    if len(rows) > MAX_ACTION_FRAMES:
        raise ActionParseError(f"{path}: {len(rows):,} rows, more than MAX_ACTION_FRAMES = {MAX_ACTION_FRAMES:,}")
    return frame_rows_to_latent(rows, modality, str(path))


def parse_actions(spec: str, modality: str, num_latent_frames: int | None = None) -> np.ndarray:
    """A preset name, a .json file or an action string -> float32 [F, width] per latent frame to generate."""
    spec = spec.strip()
    if spec in PRESETS[get_modality(modality).name]:
        frames = DEFAULT_PRESET_LATENT_FRAMES if num_latent_frames is None else num_latent_frames
        return get_preset(spec, modality, frames)
    if spec.lower().endswith(".json"):
        return load_action_file(spec, modality)
    return frame_rows_to_latent(parse_frame_rows(spec, modality), modality, f"action string {spec!r}")
