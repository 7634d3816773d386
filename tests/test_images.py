import numpy as np
import pytest
from PIL import Image

from astra.images import to_rgb
from astra.rollout.session import read_image


@pytest.mark.parametrize(
    "array, mode, expected",
    [
        (np.full((4, 4), 32768, np.uint16), "I;16", 128),  # 16-bit grey: half scale, not clipped to white
        (np.full((4, 4), 100, np.int32), "I", 100),  # an int grey that uses 0..255 keeps it
        (np.full((4, 4), 0.5, np.float32), "F", 128),  # float grey in 0..1: half scale, not black
        (np.full((4, 4), 200.0, np.float32), "F", 200),  # float grey beyond 1 is taken as 0..255
    ],
)
def test_grey_modes_are_scaled_not_clipped(array, mode, expected):
    image = Image.fromarray(array)
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert abs(int(rgb.mean()) - expected) <= 1


def test_sixteen_bit_png_from_disk_is_not_white(tmp_path):
    path = tmp_path / "grey16.png"
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(path)
    with Image.open(path) as opened:
        assert opened.mode in ("I;16", "I")  # what PIL's convert("RGB") clipped at 255
    pixels = np.asarray(read_image(path))
    assert 100 < pixels.mean() < 155 and pixels.min() == 0 and pixels.max() == 255


def test_decompression_bomb_is_a_clean_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then over twice the limit: PIL refuses it
    with pytest.raises(Exception, match="cannot read image .*big.png") as caught:
        read_image(path)
    assert type(caught.value).__name__ == "AstraError"
