"""PNG plots drawn with PIL (no plotting dependency): line plots and GT-vs-model contact sheets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from astra.files import atomic_path

COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75), (227, 119, 194))
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)


@dataclass(frozen=True)
class PlotStyle:
    width: int = 640
    height: int = 300
    margin_left: int = 60
    margin_right: int = 20
    margin_top: int = 24  # above the legend, which sits between the title and the axes
    legend_row: int = 14
    margin_bottom: int = 40
    ticks: int = 5


def _nice_range(values: np.ndarray) -> tuple[float, float]:
    low, high = float(np.min(values)), float(np.max(values))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def line_plot(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    style: PlotStyle = PlotStyle(),
) -> Image.Image:
    """One panel: each series is (x, y); NaN/inf points are left out."""
    image = Image.new("RGB", (style.width, style.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, top = style.margin_left, style.margin_top + style.legend_row * len(series)
    right, bottom = style.width - style.margin_right, style.height - style.margin_bottom
    finite = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    all_x = np.concatenate([x[np.isfinite(y)] for x, y in finite] or [np.zeros(1)])
    all_y = np.concatenate([y[np.isfinite(y)] for _, y in finite] or [np.zeros(1)])
    x_low, x_high = _nice_range(all_x if all_x.size else np.zeros(1))
    y_low, y_high = _nice_range(all_y if all_y.size else np.zeros(1))

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    for tick in range(style.ticks + 1):
        y_value = y_low + (y_high - y_low) * tick / style.ticks
        x_value = x_low + (x_high - x_low) * tick / style.ticks
        _, y_pixel = to_pixel(x_low, y_value)
        x_pixel, _ = to_pixel(x_value, y_low)
        draw.line([(left, y_pixel), (right, y_pixel)], fill=GRID)
        draw.text((4, y_pixel - 6), f"{y_value:.3g}", fill=INK)
        x_label = f"{x_value:.0f}" if x_high - x_low > 10 else f"{x_value:.3g}"
        draw.text((x_pixel - 10, bottom + 6), x_label, fill=INK)
    draw.rectangle([left, top, right, bottom], outline=INK)
    draw.text((left, 8), title, fill=INK)
    draw.text(((left + right) // 2 - 3 * len(xlabel), style.height - 16), xlabel, fill=INK)
    draw.text((4, top - style.legend_row), ylabel, fill=INK)

    for index, (label, (x, y)) in enumerate(zip(series, finite)):
        color = COLORS[index % len(COLORS)]
        points = [to_pixel(px, py) for px, py in zip(x, y) if np.isfinite(py)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=color)
        legend_y = style.margin_top + style.legend_row * index
        draw.line([(left, legend_y + 6), (left + 20, legend_y + 6)], fill=color, width=2)
        draw.text((left + 25, legend_y), label, fill=INK)
    return image


def stack_vertically(images: Sequence[Image.Image]) -> Image.Image:
    width = max(image.width for image in images)
    sheet = Image.new("RGB", (width, sum(image.height for image in images)), BACKGROUND)
    offset = 0
    for image in images:
        sheet.paste(image, (0, offset))
        offset += image.height
    return sheet


@dataclass(frozen=True)
class SheetStyle:
    min_tile: int = 96  # frames are upscaled (nearest) to at least this many pixels high
    label_width: int = 110
    header_height: int = 18
    gap: int = 2


def contact_sheet(
    rows: Sequence[tuple[str, np.ndarray]], column_labels: Sequence[str], style: SheetStyle = SheetStyle()
) -> Image.Image:
    """rows: (label, frames uint8 [K, H, W, 3]) with the same K; one tile per frame, labels on the left/top."""
    height, width = rows[0][1].shape[1:3]
    scale = max(1, -(-style.min_tile // height))
    tile_h, tile_w = height * scale, width * scale
    columns = len(column_labels)
    sheet = Image.new(
        "RGB",
        (style.label_width + columns * (tile_w + style.gap), style.header_height + len(rows) * (tile_h + style.gap)),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(column_labels):
        draw.text((style.label_width + column * (tile_w + style.gap) + 2, 3), label, fill=INK)
    for row, (label, frames) in enumerate(rows):
        y = style.header_height + row * (tile_h + style.gap)
        draw.text((4, y + tile_h // 2 - 6), label, fill=INK)
        for column, frame in enumerate(frames):
            tile = Image.fromarray(frame).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            sheet.paste(tile, (style.label_width + column * (tile_w + style.gap), y))
    return sheet


def load_png(path: Path) -> Image.Image:
    """A PNG read into memory (the file is closed at once)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def save_png(image: Image.Image, path: Path) -> Path:
    """Atomic write (astra.files.atomic_path): a reader finds the old picture or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path
