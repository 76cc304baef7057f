"""Image files as every command reads them (evaluate's and train's conversations,
export_features' `--image`): the size the header claims checked against a budget before any
pixel is decoded (a 115-byte PNG may claim 12000 x 12000 pixels: 2.7 GB), and the pixels
decoded whole or refused (never a truncated file's missing rows filled with zeros)."""
from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile

MOST_PIXELS = 1 << 26
"""The most pixels an image file may claim (67 108 864: 8192 x 8192, 256 MiB as RGBA), far past
what any vision tower reads (LLaVA-OneVision's 3000 x 2000 photos are 6 million)."""


class ImageError(ValueError):
    """An image file that cannot be used; the message names it and says why."""


def check_size(path, opened: Image.Image) -> None:
    """Refuses an image whose header claims more than `MOST_PIXELS` pixels (read from the
    header alone: nothing is decoded)."""
    width, height = opened.size
    if width * height > MOST_PIXELS:
        raise ImageError(f"image {path} claims {width} x {height} pixels; expected at most "
                         f"{MOST_PIXELS:,} pixels (8192 x 8192)".replace(",", " "))


def read_image(path) -> Image.Image:
    """The image file `path` as RGB, decoded whole: refused (`ImageError`) when it is missing,
    not an image PIL reads, larger than `MOST_PIXELS`, or truncated."""
    path = Path(path)
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with warnings.catch_warnings():
            # The budget is checked here; PIL's own bomb warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                check_size(path, opened)
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                opened.load()
                return opened.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"image {path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"image {path} is a folder; expected an image file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # PIL raises several types for a file it cannot read, a truncated one among them.
        text = " ".join(str(error).split())[:200]
        raise ImageError(f"image {path} is not an image PIL reads whole ({text})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
