import json

import numpy as np
import pytest

from astra.actions import align, geometry, presets
from astra.actions.parse import ActionParseError, load_action_file, parse_actions, parse_frame_rows


def test_keyboard_string_key_fractions_and_mouse():
    actions = parse_actions("w*4, wd*2, qm(2,-1)*2, -*4", "keyboard_mouse")
    assert actions.shape == (3, 8)
    np.testing.assert_allclose(actions[0], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(actions[1], [0.5, 0, 0, 0.5, 0.5, 0, 4, -2])
    np.testing.assert_allclose(actions[2], np.zeros(8))
    np.testing.assert_array_equal(parse_actions("left*4", "keyboard_mouse"), parse_actions("q*4", "keyboard_mouse"))


@pytest.mark.parametrize(
    "text, message",
    [("w*4,x*4", "position 4 .*unknown key 'x'"), ("w*3", "multiple of 4"), ("w*a", "position 0.*count"), ("w*4,,w*4", "position 4.*empty")],
)
def test_keyboard_errors_give_position(text, message):
    with pytest.raises(ActionParseError, match=message):
        parse_actions(text, "keyboard_mouse")


@pytest.mark.parametrize(
    "text, message",
    [
        ("w*4,m(1..2,0)*4", r"position 4 .*mouse delta 'm\(1..2,0\)' must be m\(DX,DY\)"),
        ("m(.,0)*4", r"position 0 .*mouse delta"),
        ("w*10000000000", r"position 0 .*more than MAX_ACTION_FRAMES = 100,000 video frames"),
        ("w*60000,s*60000", r"position 8 .*more than MAX_ACTION_FRAMES"),
        ("w*" + "9" * 5000, r"position 0 .*more than MAX_ACTION_FRAMES"),  # beyond what int() converts
    ],
    ids=["two-dots", "lone-dot", "huge-count", "huge-total", "5000-digits"],
)
def test_bad_mouse_deltas_and_huge_counts_are_parse_errors(text, message):
    with pytest.raises(ActionParseError, match=message):
        parse_frame_rows(text, "keyboard_mouse")


def test_mouse_deltas_take_signs_and_bare_decimal_points():
    np.testing.assert_allclose(parse_frame_rows("m(-.5,+2.)", "keyboard_mouse")[0, 6:], [-0.5, 2.0])


def test_camera_string_matches_preset_direction():
    forward = parse_actions("forward*8", "camera7")
    np.testing.assert_allclose(forward, np.tile([0, 0, presets.FORWARD_STEP, 0, 0, 0, 1], (2, 1)), atol=1e-6)
    left = parse_actions("turn_left*4", "camera12")[0].reshape(3, 4)
    np.testing.assert_allclose(left[:, :3] @ [0, 0, 1], [-np.sin(presets.YAW_STEP), 0, np.cos(presets.YAW_STEP)], atol=1e-6)
    with pytest.raises(ActionParseError, match="unknown word 'jump'"):
        parse_actions("forward+jump*4", "camera7")


def test_robot_gripper_persists_until_opened():
    actions = parse_actions("up+close*4,forward*4,open*4", "robot7")
    np.testing.assert_allclose(actions[:, 2], [presets.ROBOT_STEP, 0, 0], atol=1e-6)
    np.testing.assert_allclose(actions[:, 0], [0, presets.ROBOT_STEP, 0], atol=1e-6)
    np.testing.assert_array_equal(actions[:, 6], [1, 1, 0])


def test_json_files(tmp_path):
    rows = parse_frame_rows("w*4,d*4", "keyboard_mouse")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(rows.tolist()))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"modality": "keyboard_mouse", "frames": rows.tolist()}))
    expected = parse_actions("w*4,d*4", "keyboard_mouse")
    np.testing.assert_array_equal(parse_actions(str(plain), "keyboard_mouse"), expected)
    np.testing.assert_array_equal(load_action_file(wrapped, "keyboard_mouse"), expected)
    with pytest.raises(ActionParseError, match="modality 'keyboard_mouse', expected 'robot7'"):
        load_action_file(wrapped, "robot7")
    for bad_value, name in ((float("nan"), "nan"), (1e30, "huge")):  # a huge mouse delta overflowed in the experts
        bad_rows = rows.copy()
        bad_rows[5, 6] = bad_value
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(bad_rows.tolist()))
        with pytest.raises(ActionParseError, match=f"{name}.json: row 5 holds a non-finite value or one beyond 10000"):
            load_action_file(bad, "keyboard_mouse")


def test_camera_presets_follow_the_paper():
    assert presets.list_presets("camera7") == sorted(
        ["forward", "turn_left", "turn_right", "forward_left", "forward_right", "s_curve", "left_then_right"]
    )
    s_curve = presets.get_preset("s_curve", "camera7", 24)
    assert s_curve.shape == (24, 7)
    poses = align.integrate_latent_actions("camera7", np.concatenate([align.identity_action("camera7")[None], s_curve]))
    yaw_left = -geometry.matrix_to_rpy(poses[:, :3, :3][:, [2, 0, 1]][:, :, [2, 0, 1]])[:, 2]  # about camera -y
    np.testing.assert_allclose(yaw_left[12], 12 * presets.YAW_STEP, atol=1e-6)
    np.testing.assert_allclose(yaw_left[24], 0.0, atol=1e-6)
    assert poses[12, 0, 3] < 0 and poses[24, 2, 3] > 20  # drifted left, moved forward
    lr = presets.get_preset("left_then_right", "camera12", 10)
    np.testing.assert_allclose(lr[:, 3], 0.0)  # no translation


@pytest.mark.parametrize("modality", ["keyboard_mouse", "robot7", "vehicle7", "camera12"])
def test_every_preset_has_the_right_shape(modality):
    for name in presets.list_presets(modality):
        actions = presets.get_preset(name, modality, 7)
        assert actions.shape == (7, align.get_modality(modality).width) and np.isfinite(actions).all()
    with pytest.raises(ValueError, match="no robot7 preset 'fly'"):
        presets.get_preset("fly", "robot7", 4)
