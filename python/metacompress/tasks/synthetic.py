"""Synthetic images for the tiny random-weight models (`metacompress.models.tiny`): random
sizes, a few coloured blocks on noise."""
from __future__ import annotations

import random

import numpy as np
from PIL import Image


def synthetic_image(rng: random.Random) -> Image.Image:
    """A random image of random size with a few coloured blocks on noise."""
    width, height = rng.randint(40, 130), rng.randint(40, 130)
    array = np.full((height, width, 3), rng.randint(0, 255), dtype=np.uint8)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randint(0, width - 8), rng.randint(0, height - 8)
        array[y0:y0 + rng.randint(4, 30), x0:x0 + rng.randint(4, 30)] = [rng.randint(0, 255) for _ in range(3)]
    noise = np.array([rng.randint(-20, 20) for _ in range(width * height * 3)]).reshape(height, width, 3)
    return Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))
