"""PNG grids of images, written atomically (temporary file, then rename). numpy + Pillow only."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image, ImageDraw

from vdm_mri import atomic


def to_uint8(image: np.ndarray, hi: float = 1.0) -> np.ndarray:
  """Intensities in [0, hi] -> uint8 grey levels (clipped)."""
  return (np.clip(np.asarray(image, np.float64) / hi, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid(rows: dict[str, np.ndarray], hi: float = 1.0, pad: int = 2,
         label_width: int = 90) -> Image.Image:
  """One row per entry of `rows` ({label: [N, H, W]}), N images side by side, label at the left."""
  arrays = [np.asarray(a) for a in rows.values()]
  n = max(a.shape[0] for a in arrays)
  h = max(a.shape[1] for a in arrays)
  w = max(a.shape[2] for a in arrays)
  canvas = Image.new("L", (label_width + n * (w + pad), len(arrays) * (h + pad)), 0)
  draw = ImageDraw.Draw(canvas)
  for r, (label, a) in enumerate(zip(rows, arrays)):
    top = r * (h + pad)
    draw.text((4, top + h // 2 - 5), label, fill=255)
    for c in range(a.shape[0]):
      canvas.paste(Image.fromarray(to_uint8(a[c], hi)), (label_width + c * (w + pad), top))
  return canvas


def panel_row(panels: dict[str, np.ndarray], hi: float, std_hi: float) -> Image.Image:
  """One row of labelled H×W grey panels ({label: image}); the "std" panel has its own window."""
  label_h = 14
  images = [to_uint8(p, max(std_hi if name == "std" else hi, 1e-12))
            for name, p in panels.items()]
  H, W = images[0].shape
  canvas = Image.new("L", (W * len(images), H + label_h), 0)
  draw = ImageDraw.Draw(canvas)
  for j, (name, im) in enumerate(zip(panels, images)):
    canvas.paste(Image.fromarray(im), (j * W, label_h))
    draw.text((j * W + 2, 1), name, fill=255)
  return canvas


def save_png(image: Image.Image, path) -> pathlib.Path:
  """Write `image` to `path` atomically: a reader never sees a half-written file."""
  return atomic.write_with(path, lambda f: image.save(f, format="PNG"))
