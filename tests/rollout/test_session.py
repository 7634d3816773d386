import numpy as np
import pytest
from PIL import Image

from astra.errors import AstraError, UnusualActionWarning
from astra.rollout.session import prepare_image


def keys(rows: int, column: int) -> np.ndarray:
    out = np.zeros((rows, 8), np.float32)
    out[:, column] = 1.0
    return out


def test_start_resizes_any_image_and_steps_yield_frames(tiny_session):
    session = tiny_session()
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    with pytest.warns(UserWarning, match="resized and centre-cropped"):
        first = session.start(image)
    assert first.shape == (16, 16, 3) and first.dtype == np.uint8
    frames = session.step(keys(session.frames_per_step, 0))
    assert frames.shape == (session.frames_per_step, 16, 16, 3)


def test_same_seed_same_video_and_actions_change_it(tiny_session):
    image = np.full((16, 16, 3), 100, np.uint8)

    def rollout(column: int, seed: int = 0) -> np.ndarray:
        session = tiny_session()
        session.start(image, seed=seed)
        return np.concatenate([session.step(keys(session.frames_per_step, column)) for _ in range(3)])

    left, left_again, right = rollout(4), rollout(4), rollout(5)
    assert np.array_equal(left, left_again)
    assert not np.array_equal(left, right)
    assert not np.array_equal(left, rollout(4, seed=1))


def test_cache_stays_bounded_over_a_long_rollout(tiny_session):
    session = tiny_session()
    session.start(np.zeros((16, 16, 3), np.uint8))
    sizes = []
    for _ in range(8):
        session.step(keys(session.frames_per_step, 0))
        sizes.append(session.cache.nbytes())
    assert sizes[-1] == sizes[-4], "the rolling window must bound the cache"


def test_bad_input_is_a_clear_error(tiny_session):
    session = tiny_session()
    with pytest.raises(AstraError, match="start"):
        session.step(keys(session.frames_per_step, 0))
    session.start(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(AstraError, match="rows"):
        session.step(np.zeros((3, 8), np.float32))
    bad = keys(session.frames_per_step, 0)
    bad[1, 2] = np.nan
    with pytest.raises(AstraError, match="non-finite"):
        session.step(bad)
    with pytest.raises(AstraError, match="uint8"):
        session.start(np.zeros((16, 16), np.float32))
    camera = tiny_session("camera7")
    camera.start(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(AstraError, match=r"step\(\): camera7 rows: row 0 has a zero-length rotation quaternion"):
        camera.step(np.zeros((camera.frames_per_step, 7), np.float32))


@pytest.mark.parametrize("history_noise, stats_anchor", [(0.0, 0.0), (0.2, 0.5)])
def test_a_non_streaming_model_recomputes_its_history(tiny_parts, history_noise, stats_anchor):
    """The authors' layout (bidirectional attention, shared timestep) has no cache: history is recomputed."""
    import dataclasses

    from astra.rollout.session import RolloutSession

    model, vae, config = tiny_parts()
    compat = type(model)(model.config.replace(attention="bidirectional", per_frame_timesteps=False)).eval()
    compat.load_state_dict(model.state_dict())
    options = dataclasses.replace(config, history_noise=history_noise, stats_anchor=stats_anchor)
    session = RolloutSession(compat, vae, "keyboard_mouse", options)
    assert not session.streaming
    session.start(np.zeros((16, 16, 3), np.uint8))
    for _ in range(session.max_history + 2):
        frames = session.step(keys(session.frames_per_step, 4))
        assert frames.shape == (session.frames_per_step, 16, 16, 3)
    assert session.history_latents.shape[2] == session.max_history and session.cache is None


def test_history_noise_is_seeded_shown_to_the_model_and_validated(tiny_parts):
    """Memory noised to `history_noise`: the same seed gives the same video, the model sees the level, and the
    anchor it copies is the noised memory (as in training), not the clean latent."""
    import dataclasses

    import torch

    from astra.rollout.session import RolloutSession

    model, vae, config = tiny_parts()
    image = np.full((16, 16, 3), 100, np.uint8)

    def rollout(level: float) -> tuple[np.ndarray, RolloutSession]:
        session = RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, history_noise=level))
        session.start(image, seed=3)
        return np.concatenate([session.step(keys(session.frames_per_step, 4)) for _ in range(3)]), session

    noisy, session = rollout(0.3)
    assert np.array_equal(noisy, rollout(0.3)[0])
    assert not np.array_equal(noisy, rollout(0.0)[0])
    assert not torch.equal(session.newest_memory, session.newest_latent)
    clean_session = rollout(0.0)[1]
    assert torch.equal(clean_session.newest_memory, clean_session.newest_latent)
    with pytest.raises(AstraError, match="history_noise"):
        RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, history_noise=1.0))
    with pytest.raises(AstraError, match="num_steps"):
        RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, num_steps=0))
    for interval in ((0.9, 0.1), (0.0, 1.5), (0.5,), ("a", "b")):
        with pytest.raises(AstraError, match="guidance interval"):
            RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, guidance_interval=interval))


def test_a_clean_anchor_model_copies_the_generated_frame_not_the_noised_memory(tiny_parts, monkeypatch):
    """`clean_anchor` (a training setting the checkpoint carries) changes which newest frame the copy prior copies."""
    import dataclasses

    import torch

    import astra.rollout.session as session_module
    from astra.rollout.session import RolloutSession

    model, vae, config = tiny_parts()
    seen = []

    def spy(*args, anchor=None, **kwargs):
        seen.append(anchor)
        return real(*args, anchor=anchor, **kwargs)

    real = session_module.sample_chunk
    monkeypatch.setattr(session_module, "sample_chunk", spy)
    for clean in (False, True):
        session = RolloutSession(
            model, vae, "keyboard_mouse", dataclasses.replace(config, history_noise=0.3, clean_anchor=clean)
        )
        session.start(np.full((16, 16, 3), 100, np.uint8), seed=3)
        session.step(keys(session.frames_per_step, 4))
        remembered, generated = session.newest_memory[:, :, -1:], session.newest_latent[:, :, -1:]
        session.step(keys(session.frames_per_step, 4))
        assert torch.equal(seen[-1], generated if clean else remembered)
        assert not torch.equal(remembered, generated)


def test_noise_scale_zero_makes_the_video_independent_of_the_seed(tiny_parts):
    """The starting noise is the only draw left at history_noise 0, so scaling it to 0 leaves one video per
    (image, actions); any other scale still depends on the seed. Bad scales are named."""
    import dataclasses

    from astra.rollout.session import RolloutSession

    model, vae, config = tiny_parts()
    image = np.full((16, 16, 3), 100, np.uint8)

    def rollout(noise_scale: float, seed: int) -> np.ndarray:
        options = dataclasses.replace(config, history_noise=0.0, noise_scale=noise_scale)
        session = RolloutSession(model, vae, "keyboard_mouse", options)
        session.start(image, seed=seed)
        return np.concatenate([session.step(keys(session.frames_per_step, 4)) for _ in range(2)])

    assert np.array_equal(rollout(0.0, seed=1), rollout(0.0, seed=2))
    assert not np.array_equal(rollout(0.5, seed=1), rollout(0.5, seed=2))
    assert not np.array_equal(rollout(0.5, seed=1), rollout(1.0, seed=1))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(AstraError, match=r"noise scale \(--noise-scale\)"):
            RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, noise_scale=bad))
        with pytest.raises(AstraError, match=r"shift \(--shift\)"):
            RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, shift=bad))


def test_stats_anchor_pulls_each_generated_frame_toward_the_start_frames_colour_and_contrast(tiny_parts):
    """At anchor 1 every generated latent frame, as decoded and remembered, has the start frame's spatial statistics
    (per channel, or the joint channel covariance); 0 changes nothing; bad values are named. The arithmetic itself
    is tested in test_anchor.py."""
    import dataclasses

    import torch

    from astra.rollout.anchor import spatial_stats
    from astra.rollout.session import RolloutSession

    model, vae, config = tiny_parts()
    image = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)

    def generated(anchor: float, match: str = "channels") -> tuple[torch.Tensor, torch.Tensor]:
        options = dataclasses.replace(config, stats_anchor=anchor, stats_anchor_match=match)
        session = RolloutSession(model, vae, "keyboard_mouse", options)
        session.start(image, seed=5)
        session.step(keys(session.frames_per_step, 4))
        return session.newest_latent, session.start_latent

    plain, start = generated(0.0)
    start_mean, start_spread = spatial_stats(start)
    assert not torch.allclose(spatial_stats(plain)[1], start_spread.expand_as(plain[:, :, :, :1, :1]), rtol=1e-2)
    for match in ("channels", "covariance"):
        anchored, _ = generated(1.0, match)
        mean, spread = spatial_stats(anchored)
        assert torch.allclose(mean, start_mean.expand_as(mean), atol=1e-4)
        assert torch.allclose(spread, start_spread.expand_as(spread), rtol=1e-3)
    assert torch.equal(generated(0.0, "covariance")[0], plain)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(AstraError, match=r"stats anchor \(--stats-anchor\)"):
            RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, stats_anchor=bad))
    with pytest.raises(AstraError, match=r"--stats-anchor-match.*mean, channels, covariance.*'hue'"):
        RolloutSession(model, vae, "keyboard_mouse", dataclasses.replace(config, stats_anchor_match="hue"))


def test_a_bfloat16_model_streams(tiny_parts):
    """On a GPU the weights are bf16: the session feeds noise, actions and latents in the weights' dtype."""
    import torch

    from astra.rollout.session import RolloutSession

    model, vae, config = tiny_parts()
    session = RolloutSession(model.to(torch.bfloat16), vae, "keyboard_mouse", config)
    session.start(np.zeros((16, 16, 3), np.uint8))
    assert session.step(keys(session.frames_per_step, 0)).dtype == np.uint8


def test_actions_far_outside_the_training_data_warn_once_per_column(tiny_session, recwarn):
    import torch

    session = tiny_session(normalize_actions=True)
    width = session.width
    session.model.action_projectors.set_statistics(
        {"keyboard_mouse": (torch.zeros(width), torch.ones(width))}, keep_function=False
    )
    session.start(np.zeros((16, 16, 3), np.uint8))
    ordinary = np.zeros((1, width), np.float32)
    ordinary[0, 6] = 3.0
    session.step_latent(ordinary)
    assert not [w for w in recwarn if w.category is UnusualActionWarning]
    far = ordinary.copy()
    far[0, 6] = 80.0  # e.g. a mouse delta given in degrees where the model counts in mouse_scale units
    with pytest.warns(UnusualActionWarning, match="mouse_dx = 80 lies 80 standard deviations"):
        session.step_latent(far)
    recwarn.clear()
    session.step_latent(far)
    assert not [w for w in recwarn if w.category is UnusualActionWarning], "each column warns once per session"


def test_a_reference_frame_vae_decodes_the_first_chunk_from_the_real_start_image(tiny_parts):
    """The session hands the real start image to the VAE's stream decoder; a VAE without a reference path is
    unaffected (the same frames as before the path existed)."""
    import torch

    from astra.rollout.session import RolloutSession
    from astra.vae.small import add_reference_path

    model, vae, config = tiny_parts()
    extended = add_reference_path(vae).eval()
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    rows = keys(4, 4)

    def play(decoder_vae):
        session = RolloutSession(model, decoder_vae, "keyboard_mouse", config)
        return session.start(image, seed=1), session.step(rows[: session.frames_per_step])

    plain = play(vae)
    np.testing.assert_array_equal(play(extended)[1], plain[1])  # zero-initialised path: same video
    with torch.no_grad():
        for parameter in extended.decoder.reference.parameters():
            parameter.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(parameter.numel()))
    start_frame, chunk = play(extended)
    assert np.abs(start_frame.astype(int) - plain[0].astype(int)).max() > 0
    assert np.abs(chunk.astype(int) - plain[1].astype(int)).max() > 0


def test_prepare_image_crops_before_it_resamples(monkeypatch):
    """An extreme aspect ratio (a few-kilobyte upload can be 2 x 60,000 pixels) is cropped in the source's pixels:
    nothing larger than the output is ever allocated, and the crop is the centre."""
    tall = np.zeros((60_000, 2, 3), np.uint8)
    tall[:20_000, :, 0], tall[20_000:40_000, :, 1], tall[40_000:, :, 2] = 255, 255, 255  # red / green / blue thirds
    requested = []
    original_resize = Image.Image.resize

    def recording_resize(self, size, *args, **kwargs):
        requested.append(size)
        return original_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    with pytest.warns(UserWarning, match="resized and centre-cropped"):
        out = prepare_image(tall, (16, 16))
    assert out.shape == (16, 16, 3) and max(w * h for w, h in requested) <= 16 * 16
    assert (out[..., 1] == 255).all() and (out[..., [0, 2]] == 0).all()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_prepare_image_turns_any_pil_mode_into_rgb(mode):
    """A grey, palette or RGBA PIL image passed directly reached torch as [H, W] or with 4 channels."""
    image = Image.new("RGB", (16, 16), (10, 200, 30)).convert(mode)
    out = prepare_image(image, (16, 16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out == np.asarray(image.convert("RGB"))).all()


def test_load_rollout_puts_the_vae_on_the_models_device(tmp_path, tiny_parts):
    """Only the model moved: a GPU model met a CPU VAE at the first encode (meta stands in for the GPU)."""
    from astra.model.checkpoints import save_astra
    from astra.rollout.session import load_rollout
    from astra.vae import save_small_vae

    model, vae, _ = tiny_parts()
    save_small_vae(vae, tmp_path / "vae")
    save_astra(model, tmp_path / "model", metadata={"vae": str(tmp_path / "vae")})
    model, vae, _, _ = load_rollout(tmp_path / "model", device="meta")
    assert next(model.parameters()).device.type == "meta" and next(vae.parameters()).device.type == "meta"


def test_load_rollout_reads_the_training_anchor_from_the_checkpoint(tmp_path, tiny_parts):
    from astra.model.checkpoints import save_astra
    from astra.rollout.session import load_rollout
    from astra.vae import save_small_vae

    model, vae, _ = tiny_parts()
    save_small_vae(vae, tmp_path / "vae")
    for clean in (False, True):
        save_astra(model, tmp_path / f"model-{clean}", metadata={"vae": str(tmp_path / "vae"), "clean_anchor": clean})
        assert load_rollout(tmp_path / f"model-{clean}")[3].clean_anchor is clean
    save_astra(model, tmp_path / "older", metadata={"vae": str(tmp_path / "vae")})  # before the setting existed
    assert load_rollout(tmp_path / "older")[3].clean_anchor is False
