"""Pictures from users and datasets as 8-bit RGB, whatever their mode."""

from __future__ import annotations

import numpy as np
from PIL import Image

# full scale of the grey modes that PIL's convert("RGB") clips at 255 instead of scaling: a 16-bit scan came out
# white, a float one in [0, 1] black
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture as 8-bit RGB: 16-bit and 32-bit integer greys scaled from 0..65535 (0..255 when that is all
    they use), float greys from 0..1 (when that is all they use, else taken as 0..255)."""
    if image.mode not in SIXTEEN_BIT_MODES + ("I", "F"):
        return image.convert("RGB")  # a copy even when RGB already: the caller may close the file
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = values.max(initial=0.0)
    if image.mode == "F":
        full_scale = 1.0 if values.min(initial=0.0) >= 0.0 and top <= 1.0 else 255.0
    else:
        full_scale = 255.0 if image.mode == "I" and top <= 255 else 65535.0
    grey = np.clip(values * (255.0 / full_scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
