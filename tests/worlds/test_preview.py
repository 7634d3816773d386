import numpy as np
import pytest
from PIL import Image

from astra.cli import main
from astra.data.format import Episode, write_episode
from astra.worlds.preview import ARROW, PreviewConfig, draw_action, preview, scaled_row

FRAMES = 5


def episode(modality: str, actions: np.ndarray, meta: dict) -> Episode:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (FRAMES, 16, 16, 3), dtype=np.uint8)
    return Episode(frames=frames, actions=actions.astype(np.float32), modality=modality, fps=10.0, meta=meta)


def identity_quaternion_rows(count: int) -> np.ndarray:
    rows = np.zeros((count, 7))
    rows[:, 6] = 1.0
    return rows


@pytest.fixture()
def episodes(tmp_path):
    keys = np.zeros((FRAMES, 8))
    keys[:, 0] = 1
    keys[:, 6] = 5.0
    write_episode(tmp_path, "doom-train-000000", episode("keyboard_mouse", keys, {"mouse_scale": 14.0}))
    camera = identity_quaternion_rows(FRAMES)
    camera[:, 2] = 1.0
    write_episode(tmp_path, "camera-train-000000", episode("camera7", camera, {"translation_scale": 1.0}))
    robot = np.zeros((FRAMES, 7))
    robot[:, 0], robot[:, 6] = 1.0, 1.0
    write_episode(tmp_path, "robot-train-000000", episode("robot7", robot, {"translation_scale": 1.0}))
    return tmp_path


def test_contact_sheet_and_gif(episodes, tmp_path):
    png, gif = tmp_path / "out" / "sheet.png", tmp_path / "out" / "anim.gif"
    assert preview(episodes, [png, gif], PreviewConfig(episodes=3, columns=4, scale=4)) == [png, gif]
    sheet = Image.open(png)
    assert sheet.size == (4 * 64, 3 * (64 + 12))
    animation = Image.open(gif)
    assert animation.n_frames == FRAMES and animation.size == (3 * 64, 64)


@pytest.mark.parametrize(
    "modality, rest, moved",
    [
        ("keyboard_mouse", np.zeros(8), np.array([1, 0, 0, 0, 0, 1, 3.0, 0])),
        ("camera7", identity_quaternion_rows(1)[0], np.array([0.5, 0, 1, 0, 0.08, 0, 0.997])),
        ("camera12", np.eye(3, 4).ravel(), np.eye(3, 4).ravel() + np.eye(3, 4)[:, [3, 0, 1, 2]].ravel()),
        ("robot7", np.zeros(7), np.array([1, 0, 0.5, 0, 0, 0, 1.0])),
    ],
)
def test_actions_change_the_drawing(modality, rest, moved):
    frame = np.zeros((32, 32, 3), np.uint8)
    still = np.asarray(draw_action(frame, rest.astype(np.float32), modality, {}, scale=2))
    acting = np.asarray(draw_action(frame, moved.astype(np.float32), modality, {}, scale=2))
    assert still.shape == (64, 64, 3)
    assert (np.abs(acting.astype(int) - still).sum(axis=-1) > 0).sum() > 10  # the action is visible


def _arrow_length(image, across: bool) -> int:
    """Columns (`across`) or rows of the picture holding the arrow's colour: its length in pixels, plus one."""
    return int(np.all(np.asarray(image) == ARROW, axis=-1).any(axis=0 if across else 1).sum())


def test_each_row_is_scaled_once():
    """Episode pose rows are recorded scaled already: dividing them by translation_scale again made every camera
    arrow full length; robot7 and mouse rows are raw and scaled here; per-latent actions are drawn as they are."""
    meta = {"translation_scale": 0.1, "mouse_scale": 14.0}
    camera = np.array([0.0, 0, 0.5, 0, 0, 0, 1])
    np.testing.assert_array_equal(scaled_row(camera, "camera7", meta), camera)
    camera12 = np.eye(3, 4).ravel()
    np.testing.assert_array_equal(scaled_row(camera12, "camera12", meta), camera12)
    np.testing.assert_allclose(scaled_row(np.array([0.05, 0, 0.1, 0.2, 0, 0, 1]), "robot7", meta),
                               [0.5, 0, 1, 0.2, 0, 0, 1])  # fmt: skip
    np.testing.assert_allclose(scaled_row(np.array([1, 0, 0, 0, 0, 0, 7.0, 0]), "keyboard_mouse", meta),
                               [1, 0, 0, 0, 0, 0, 0.5, 0])  # fmt: skip

    frame = np.zeros((64, 64, 3), np.uint8)  # dial radius 16 pixels at scale 2
    half, full = (np.array([x, 0, 0, 0, 0, 0, 1]) for x in (0.5, 1.0))  # sideways, clear of the yaw tick (up)
    for modality in ("camera7", "vehicle7"):
        short, long = (_arrow_length(draw_action(frame, row, modality, meta), across=True) for row in (half, full))
        assert 0.4 < short / long < 0.65, (modality, short, long)  # half a unit: half the radius
    # `astra generate` draws per-latent actions, scaled already: robot7 xyz and the mouse are not divided again
    robot_half, robot_full = (np.array([x, 0, 0, 0, 0, 0, 0]) for x in (0.5, 1.0))
    short, long = (_arrow_length(draw_action(frame, row, "robot7", meta, scaled=True), across=False)
                   for row in (robot_half, robot_full))  # fmt: skip
    assert 0.4 < short / long < 0.65, (short, long)
    np.testing.assert_array_equal(  # an episode row of 0.05 m at translation_scale 0.1 is the same half unit
        np.asarray(draw_action(frame, robot_half / 10, "robot7", meta)),
        np.asarray(draw_action(frame, robot_half, "robot7", meta, scaled=True)),
    )
    mouse = np.array([0, 0, 0, 0, 0, 0, 0.5, 0])
    np.testing.assert_array_equal(
        np.asarray(draw_action(frame, mouse * 14, "keyboard_mouse", meta)),
        np.asarray(draw_action(frame, mouse, "keyboard_mouse", meta, scaled=True)),
    )


def test_cli_preview_errors(tmp_path, capsys):
    assert main(["worlds", "preview", str(tmp_path)]) == 2
    assert "no complete episodes" in capsys.readouterr().err
    assert main(["worlds", "preview", str(tmp_path), "--out", str(tmp_path / "x.jpg")]) == 2
    # the sheet is allocated whole: 100,000 columns or a scale of 100,000 used up the machine's memory
    for option in ("--columns", "--scale"):
        assert main(["worlds", "preview", str(tmp_path), option, "100000"]) == 2
        assert "--columns must be <= 64 and --scale <= 16" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["worlds", "preview", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
