import av
import pytest

from astra.cli import main
from astra.model.checkpoints import save_astra
from astra.vae.small import save_small_vae


@pytest.fixture
def checkpoint(tmp_path, tiny_parts, monkeypatch):
    """A tiny random model saved like a shipped one, with its VAE under a weights folder."""
    model, vae, _ = tiny_parts()
    weights = tmp_path / "weights"
    save_small_vae(vae, weights / "astra-tiny-vae")
    save_astra(model, weights / "tiny-model", {"sampling": {"num_steps": 2, "guidance_scale": 2.0},
                                                  "action_meta": {"camera": {"translation_scale": 0.1}}})
    monkeypatch.setenv("ASTRA_WEIGHTS", str(weights))
    return "tiny-model"


def test_generate_writes_video_and_gif_with_actions(checkpoint, tmp_path):
    out = tmp_path / "camera.mp4"
    code = main(["generate", "--checkpoint", checkpoint, "--world", "camera", "--actions", "forward",
                 "--latent-frames", "3", "--out", str(out), "--gif", "--scale", "2"])
    assert code == 0 and out.exists() and out.with_suffix(".gif").exists()
    with av.open(str(out)) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == 1 + 3 * 4 and frames[0].width == 32


def test_generate_from_an_image_with_a_key_string(checkpoint, tmp_path):
    from PIL import Image

    image = tmp_path / "start.png"
    Image.new("RGB", (50, 40), (10, 120, 200)).save(image)
    out = tmp_path / "keys.mp4"
    assert main(["generate", "--checkpoint", checkpoint, "--image", str(image), "--actions", "w*4,q*4",
                 "--out", str(out), "--no-overlay", "--scale", "1"]) == 0
    assert out.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--actions", "w*3"], "multiple of 4"),
        (["--actions", "x*4"], "x"),
        (["--world", "mars"], "mars"),
        (["--image", "/no/such.png"], "such.png"),
        (["--image", "/no/such.png", "--checkpoint", "/no/model"], "such.png"),  # read before the model loads
        (["--checkpoint", "/no/model"], "no checkpoint"),
        (["--world", "doom", "--modality", "robot7"], "does not fit --world doom"),
        (["--image", "/no/such.png", "--modality", "foo"], "unknown action modality 'foo'"),
        (["--guidance", "nan"], "must be a finite number"),
        (["--guidance-interval", "0.7", "0.2"], "guidance interval must be two flow times"),
        (["--scale", "0"], "--scale must lie in 1 .. 16"),
        (["--scale", "1000"], "--scale must lie in 1 .. 16"),  # the frames were upscaled until memory ran out
        (["--latent-frames", "0"], "a preset's length must lie in 1 .. 25,000"),
        (["--latent-frames", "10000000000"], "a preset's length must lie in 1 .. 25,000"),  # a MemoryError
        (["--actions", "w*4", "--latent-frames", "50"], "--latent-frames sets the length of a preset"),  # was ignored
        (["--actions", "m(1*4"], "unclosed '('"),  # an AttributeError
    ],
)
def test_bad_input_is_one_clear_line(checkpoint, tmp_path, capsys, arguments, message):
    base = ["generate", "--checkpoint", checkpoint, "--out", str(tmp_path / "x.mp4")]
    assert main(base + arguments) == 2
    assert message in capsys.readouterr().err


def test_a_negative_seed_or_an_empty_value_names_the_option(capsys):
    assert main(["generate", "--seed", "-1"]) == 2  # argparse's own error: numpy's named no option
    assert "argument --seed: -1 is outside 0 .. 4,294,967,295" in capsys.readouterr().err
    for option in ("--image", "--actions", "--out"):  # an unset shell variable: the default ran instead
        for arguments in ([option, ""], [f"{option}="]):
            assert main(["generate", *arguments]) == 2
            assert f"empty value for {option}" in capsys.readouterr().err


def test_output_name_is_checked_before_generating(checkpoint, tmp_path, capsys):
    out = tmp_path / "clip.webm"
    assert main(["generate", "--checkpoint", checkpoint, "--world", "camera", "--out", str(out)]) == 2
    assert "--out must name an .mp4 file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "weights"]  # nothing written, no temp file left
    (tmp_path / "a_file").write_text("keep")  # a file where the folder should be: found before generating
    assert main(["generate", "--checkpoint", checkpoint, "--out", str(tmp_path / "a_file" / "x.mp4")]) == 2
    assert "a_file is a file, where a folder is needed" in capsys.readouterr().err


def test_default_actions_fit_every_world(checkpoint, tmp_path):
    """Without --actions each world plays its modality's default preset (it was doom's 'explore' for all)."""
    out = tmp_path / "robot.mp4"
    assert main(["generate", "--checkpoint", checkpoint, "--world", "robot", "--latent-frames", "2",
                 "--out", str(out), "--scale", "1"]) == 0
    assert out.exists()


def test_the_overlay_draws_the_scaled_actions_as_they_are(checkpoint, tmp_path, monkeypatch):
    """The overlay's rows are per-latent actions, already divided by their scales: drawing them as episode rows
    divided robot7 translations and mouse deltas a second time."""
    import astra.worlds.preview as preview

    drawn, draw_action = [], preview.draw_action

    def spy(frame, row, modality, meta, scale=2, scaled=False):
        drawn.append(scaled)
        return draw_action(frame, row, modality, meta, scale, scaled)

    monkeypatch.setattr(preview, "draw_action", spy)
    out = tmp_path / "robot.mp4"
    assert main(["generate", "--checkpoint", checkpoint, "--world", "robot", "--actions", "forward*4",
                 "--out", str(out), "--scale", "1"]) == 0
    assert drawn and all(drawn)
