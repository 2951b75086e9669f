"""Line plots drawn with Pillow (no matplotlib dependency): panels side by side, one legend each,
and an optional warning banner above them (also stored as the PNG's ``Warning`` text)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..data.images import ImageWriteError
from ..outputs import save_image_atomically

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PANEL_SIZE = (520, 400)
MARGIN = dict(left=62, right=18, top=34, bottom=52)
BANNER_HEIGHT = 22
WARNING_COLOUR = (200, 0, 0)


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / count
    return [low + i * step for i in range(count + 1)]


def _tick_text(value: float) -> str:
    return f"{value:g}" if abs(value - round(value)) < 1e-9 else f"{value:.2f}"


def draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], panel: Panel, xlabel: str, ylabel: str,
               xlim: tuple[float, float], ylim: tuple[float, float], font, xticks: Sequence[float] | None = None) -> None:
    ox, oy = origin
    width, height = PANEL_SIZE
    left, top = ox + MARGIN["left"], oy + MARGIN["top"]
    right, bottom = ox + width - MARGIN["right"], oy + height - MARGIN["bottom"]

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = left + (x - xlim[0]) / (xlim[1] - xlim[0] or 1) * (right - left)
        py = bottom - (y - ylim[0]) / (ylim[1] - ylim[0] or 1) * (bottom - top)
        return px, py

    draw.text((left + 40, oy + 10), panel.title, fill="black", font=font)
    for y in _ticks(*ylim):
        _, py = to_pixel(xlim[0], y)
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        draw.text((left - 40, py - 6), _tick_text(y), fill="black", font=font)
    for x in xticks if xticks is not None else _ticks(*xlim):
        px, _ = to_pixel(x, ylim[0])
        draw.line([(px, top), (px, bottom)], fill=(235, 235, 235))
        draw.text((px - 10, bottom + 6), _tick_text(x), fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2 - 3 * len(xlabel), bottom + 26), xlabel, fill="black", font=font)
    draw.text((ox + 4, top - 18), ylabel, fill="black", font=font)
    for index, series in enumerate(panel.series):
        colour = COLOURS[index % len(COLOURS)]
        points = [to_pixel(x, y) for x, y in zip(series.xs, series.ys) if y == y]  # NaN-free
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=colour)
        # legend, bottom-left inside the axes
        ly = bottom - 16 * (len(panel.series) - index) - 4
        draw.line([(left + 8, ly + 6), (left + 28, ly + 6)], fill=colour, width=3)
        draw.text((left + 34, ly), series.label, fill="black", font=font)


def line_plot(path: str | os.PathLike, panels: Sequence[Panel], xlabel: str, ylabel: str,
              xlim: tuple[float, float], ylim: tuple[float, float] = (0.0, 1.0),
              xticks: Sequence[float] | None = None, warning: str | None = None) -> Path:
    """Write one PNG with the panels side by side (atomically); returns its path.

    warning: drawn in red on a banner above the panels (the image is ``BANNER_HEIGHT`` taller) and
    stored as the PNG text ``Warning``, so that the plot cannot be shown without it."""
    panels = list(panels) or [Panel("(no data)")]
    width, height = PANEL_SIZE
    top = BANNER_HEIGHT if warning else 0
    image = Image.new("RGB", (width * len(panels), height + top), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    info = PngInfo()
    if warning:
        draw.rectangle([0, 0, image.width - 1, top - 1], fill=(255, 235, 235))
        draw.text((8, 5), warning, fill=WARNING_COLOUR, font=font)
        info.add_text("Warning", warning)
    for index, panel in enumerate(panels):
        draw_panel(draw, (index * width, top), panel, xlabel, ylabel, xlim, ylim, font, xticks)
    path = Path(path)
    save_image_atomically(image, path, "PNG", "plot", ImageWriteError, pnginfo=info)
    return path
