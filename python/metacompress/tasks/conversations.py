"""Conversations as text: LLaVA-format conversation files (`read_conversations`, checked
record by record), their turns as chat messages (`llava_messages`) and LLaVA-1.5's plain
prompt format (`plain_prompt`); and image files as every command reads them (`read_image`:
the size the header claims checked against a budget before any pixel is decoded, since a
115-byte PNG may claim 12000 x 12000 pixels, 2.7 GB; the pixels decoded whole or refused,
never a truncated file's missing rows filled with zeros). No model here: training and evaluation render them through
a model's processor (`metacompress.models.inputs`)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from PIL import Image, ImageFile


def llava_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA JSON turns (`from: human|gpt`, `value`, `<image>` in the first) as chat messages
    with the image as a content part."""
    messages = []
    for turn in conversations:
        role = {"human": "user", "gpt": "assistant"}.get(turn["from"])
        if role is None:
            raise ValueError(f"conversation turn from {turn['from']!r}: expected human or gpt")
        text = turn["value"]
        content = [{"type": "text", "text": text.replace("<image>", "").strip()}]
        if "<image>" in text:
            content.insert(0, {"type": "image"})
        messages.append({"role": role, "content": content})
    return messages


def plain_prompt(messages: list[dict], image_token: str = "<image>",
                 add_generation_prompt: bool = False) -> str:
    """A conversation in LLaVA-1.5's plain format (`USER: <image>\nQ ASSISTANT: A</s>...`), for
    processors that have no chat template (the tiny models')."""
    text = ""
    for message in messages:
        parts = "".join(image_token + "\n" if c["type"] == "image" else c["text"] for c in message["content"])
        text += f"USER: {parts} " if message["role"] == "user" else f"ASSISTANT: {parts}</s>"
    return text + ("ASSISTANT:" if add_generation_prompt else "")


class DataError(ValueError):
    """A conversations file or image that cannot be used; the message names it."""


def read_conversations(path, images) -> list[dict]:
    """The records of a LLaVA-format file, checked before any model work: a non-empty JSON list
    of `{"image": FILE, "conversations": [{"from": "human"|"gpt", "value": TEXT}, ...]}`, each
    with `<image>` once in a human turn and at least one gpt answer, its image a file under
    the folder `images` that PIL reads. Raises `DataError` naming the file and record."""
    path, images = Path(path), Path(images)
    if not path.is_file():
        raise DataError(f"--data {path}: no such file" if not path.exists()
                        else f"--data {path} is not a regular file; expected a JSON file")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"--data {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                        "expected a JSON list") from None
    except json.JSONDecodeError as error:
        raise DataError(f"--data {path} is not valid JSON: {error.msg} at line {error.lineno} "
                        f"column {error.colno}") from None
    except RecursionError:
        raise DataError(f"--data {path} nests its JSON too deeply to read; expected a list of "
                        '{"image", "conversations"} records') from None
    if not isinstance(records, list):
        raise DataError(f"--data {path} holds a JSON {type(records).__name__}; expected a list of "
                        '{"image", "conversations"} records')
    if not records:
        raise DataError(f"--data {path} is an empty list; expected at least one record")
    if not images.is_dir():
        raise DataError(f"--images {images}: no such folder")
    checked = set()
    for index, record in enumerate(records):
        where = f"--data {path} record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{where} is a {type(record).__name__}; expected an object with "
                            '"image" and "conversations"')
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise DataError(f'{where} has no "image" file name; expected a string')
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise DataError(f'{where} has no "conversations" list; expected a non-empty list of turns')
        placeholders = 0
        for number, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise DataError(f'{where} turn {number}: expected {{"from": "human" or "gpt", "value": text}}')
            if turn.get("from") not in ("human", "gpt"):
                raise DataError(f"{where} turn {number} is from {turn.get('from')!r}; expected human or gpt")
            count = turn["value"].count("<image>")
            if count and turn["from"] != "human":
                raise DataError(f"{where} turn {number}: <image> in a gpt answer; expected it in a human turn")
            placeholders += count
        if placeholders != 1:
            raise DataError(f"{where} has <image> {placeholders} times; expected it once, in a human turn")
        if not any(turn["from"] == "gpt" for turn in turns):
            raise DataError(f"{where} has no gpt answer; expected at least one (the loss is over answers)")
        file = images / image
        if file not in checked:
            if not file.is_file():
                raise DataError(f"{where}: image {file}: no such file")
            try:
                with Image.open(file) as opened:
                    check_size(file, opened)
                    opened.verify()
            except ImageError as error:
                raise DataError(f"{where}: {error}") from None
            except Exception as error:  # PIL raises several types for a file it cannot read
                raise DataError(f"{where}: image {file} is not an image PIL reads ({error})") from None
            checked.add(file)
    return records


# --- image files -----------------------------------------------------------------------------

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
