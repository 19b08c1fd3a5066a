"""Line plots drawn with Pillow (matplotlib is not a dependency): axes, tick labels as text, one
colour per line, an optional flat dashed reference level per line, a legend below the axes."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (23, 190, 207), (140, 86, 75), (227, 119, 194))
_LEFT, _RIGHT, _TOP, _BOTTOM, _ROW = 58, 14, 26, 40, 14  # margins and legend row height, px


@dataclasses.dataclass(frozen=True)
class Line:
  label: str
  x: Sequence[float]
  y: Sequence[float]
  ref: float | None = None  # a flat reference level, dashed in the line's colour


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  """About n round values (steps of 1, 2 or 5 × 10^k) from ≤ lo to ≥ hi."""
  if not hi > lo:
    lo, hi = lo - 0.5, hi + 0.5
  raw = (hi - lo) / max(n - 1, 1)
  mag = 10.0 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
  first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
  return [round(k * step, 10) for k in range(first, last + 1)]


def spread_labels(centres: Sequence[float], widths: Sequence[float], gap: float = 4.0):
  """Indices of the labels to draw, left to right, centred at `centres` (increasing) with
  `widths`: each one that clears the last one drawn by `gap` px, so crowded ticks keep a
  readable subset rather than overprinting."""
  keep, right = [], -math.inf
  for i, (c, w) in enumerate(zip(centres, widths)):
    if c - w / 2 >= right + gap:
      keep.append(i)
      right = c + w / 2
  return keep


def _spaced(text: str) -> str:
  """Pillow's built-in font draws a space 2 px wide at its default size, which runs words
  together ("imagesseen"): every space is drawn as two."""
  return text.replace(" ", "  ")


def _text_size(draw, text):
  left, top, right, bottom = draw.textbbox((0, 0), _spaced(text))
  return right - left, bottom - top


def _text(draw, xy, text):
  draw.text(xy, _spaced(text), fill="black")


def _dashed_hline(draw, x0, x1, y, colour, dash=6, gap=4):
  for start in range(int(x0), int(x1), dash + gap):
    draw.line([(start, y), (min(start + dash, x1), y)], fill=colour, width=1)


def line_plot(lines: Sequence[Line], *, title: str, xlabel: str, ylabel: str,
              log_x: bool = False, size: tuple[int, int] = (480, 320)) -> Image.Image:
  """One panel: `lines` over x (log-spaced positions when log_x), x ticks at the data's x values,
  round y ticks. Non-finite points are left out."""
  width, axes_h = size
  height = axes_h + len(lines) * _ROW + 6
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  fx = (lambda v: math.log10(v)) if log_x else float
  xs = sorted({float(v) for line in lines for v in line.x
               if math.isfinite(v) and (v > 0 or not log_x)})
  ys = [float(v) for line in lines for v in (*line.y, line.ref)
        if v is not None and math.isfinite(v)]
  yticks = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))
  x_lo, x_hi = (fx(xs[0]), fx(xs[-1])) if xs else (0.0, 1.0)
  if x_hi == x_lo:
    x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
  box = (_LEFT, _TOP, width - _RIGHT, axes_h - _BOTTOM)  # plot area: left, top, right, bottom

  def px(x, y):
    u = (fx(x) - x_lo) / (x_hi - x_lo)
    v = (y - yticks[0]) / (yticks[-1] - yticks[0])
    return box[0] + 8 + u * (box[2] - box[0] - 16), box[3] - v * (box[3] - box[1])

  for t in yticks:
    _, y = px(xs[0] if xs else 1.0, t)
    draw.line([(box[0] - 4, y), (box[0], y)], fill="black")
    draw.line([(box[0] + 1, y), (box[2] - 1, y)], fill=(232, 232, 232))
    label = f"{t:g}"
    w, h = _text_size(draw, label)
    _text(draw, (box[0] - 7 - w, y - h / 2 - 1), label)
  centres = [px(v, yticks[0])[0] for v in xs]
  widths = [_text_size(draw, f"{v:g}")[0] for v in xs]
  for x in centres:  # a tick at every x
    draw.line([(x, box[3]), (x, box[3] + 4)], fill="black")
  for i in spread_labels(centres, widths):
    _text(draw, (centres[i] - widths[i] / 2, box[3] + 6), f"{xs[i]:g}")
  w, _ = _text_size(draw, xlabel)
  _text(draw, ((box[0] + box[2] - w) / 2, box[3] + 20), xlabel)
  w, _ = _text_size(draw, title)
  _text(draw, ((width - w) / 2, 6), title)
  label = Image.new("RGB", (_text_size(draw, ylabel)[0] + 4, 14), "white")
  _text(ImageDraw.Draw(label), (2, 0), ylabel)
  label = label.rotate(90, expand=True)
  image.paste(label, (4, max(0, int((box[1] + box[3] - label.height) / 2))))
  draw.rectangle(box, outline="black")  # over the grid lines at the outer ticks
  for i, line in enumerate(lines):
    colour = COLOURS[i % len(COLOURS)]
    points = [px(x, y) for x, y in zip(line.x, line.y)
              if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)]
    if line.ref is not None and math.isfinite(line.ref):
      _dashed_hline(draw, box[0] + 1, box[2] - 1, px(xs[0] if xs else 1.0, line.ref)[1], colour)
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for x, y in points:
      draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    top = axes_h + i * _ROW
    draw.line([(box[0], top + 6), (box[0] + 22, top + 6)], fill=colour, width=2)
    _text(draw, (box[0] + 28, top), line.label)
  return image


def hstack(images: Sequence[Image.Image], pad: int = 8) -> Image.Image:
  """Panels side by side on white, top-aligned."""
  out = Image.new("RGB", (sum(im.width for im in images) + pad * (len(images) - 1),
                          max(im.height for im in images)), "white")
  left = 0
  for im in images:
    out.paste(im, (left, 0))
    left += im.width + pad
  return out
