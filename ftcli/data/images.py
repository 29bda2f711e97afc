"""Image data for `task: caption`: COCO-captions annotation files, image paths confined to their folder, and
images read with Pillow for the vision model's own image processor.

Rows keep the image's resolved path (not pixels): prepared data stays small, and the collator reads and
preprocesses each batch's images, so a change of vision model never invalidates tokenized text. Images embedded
in the data (M3IT's base64 strings, a hub dataset's Image feature) are kept as `data:` URIs instead.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftcli.data.formats import BadRow
from ftcli.errors import DataError

IMAGE_PLACEHOLDER = "<image>"  # LLaVA marks where the image goes; in GIT the image always comes first
DATA_URI = "data:image;base64,"


def begin_token_id(tokenizer) -> int:
    """The token text after the image starts with, in training and at inference: BOS, else EOS (GIT's decoder
    starts from [BOS])."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def coco_rows(path: Path) -> list[dict] | None:
    """The rows of a COCO-captions annotation file ({"images": [...], "annotations": [...]}, joined by image_id),
    one per caption, or None if the file has another shape."""
    if path.suffix != ".json":
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # not ours to report: the generic reader explains it
    if not (isinstance(body, dict) and isinstance(body.get("images"), list) and "annotations" in body):
        return None
    files = {}
    for i, image in enumerate(body["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"images[{i}] needs an id and a file_name (COCO layout)", file=str(path))
        files[image["id"]] = image["file_name"]
    rows = []
    for i, note in enumerate(body["annotations"]):
        if not isinstance(note, dict) or note.get("image_id") not in files:
            raise DataError(
                f"annotations[{i}]: image_id {note.get('image_id') if isinstance(note, dict) else None!r}"
                " is not in images",
                file=str(path),
            )
        rows.append({"image": files[note["image_id"]], "caption": note.get("caption")})
    return rows


@dataclass
class ImageRows:
    """How one source's image rows are completed: where their images live, and the text every row starts with."""

    image_dir: str | None  # None: a hub dataset without a local folder; only absolute paths (if allowed) work
    allow_outside: bool
    begin_id: int  # the token text starts with (BOS, else EOS), as GIT's decoder starts from [BOS]
    caption_prompt: str
    _checked: dict = field(default_factory=dict, repr=False)

    def resolve(self, value, column: str) -> str:
        """The image's absolute path, checked to be inside image_dir (unless allowed) and readable by Pillow."""
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, list):
            raise BadRow(column, f"{len(value)} images; one image per row is supported")
        embedded = _embedded(value, column)
        if embedded is not None:
            problem = _unreadable(io.BytesIO(embedded))
            if problem:
                raise BadRow(column, f"embedded image: {problem}")
            return DATA_URI + base64.b64encode(embedded).decode()
        if isinstance(value, dict) and isinstance(value.get("path"), str):  # an Image feature stored by path
            value = value["path"]
        if not isinstance(value, str) or not value.strip():
            raise BadRow(column, "missing or not a path; map it with data.columns.image")
        base = Path(os.path.abspath(self.image_dir)) if self.image_dir else None
        path = Path(os.path.normpath(base / value if base else os.path.abspath(value)))
        if not self.allow_outside and (base is None or not _inside(path, base)):
            where = (
                f"the image folder {base}" if base else "a local image folder (set the source's image_dir)"
            )
            raise BadRow(
                column, f"{value} is outside {where}; set data.allow_images_outside: true if intended"
            )
        key = str(path)
        if key not in self._checked:
            self._checked[key] = _unreadable(path) if path.is_file() else "image file not found"
        if self._checked[key]:
            raise BadRow(column, f"{value}: {self._checked[key]}")
        return key

    def strip_placeholder(self, messages: list[dict]) -> list[dict]:
        return [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, "").strip("\n")} for m in messages]


def _inside(path: Path, base: Path) -> bool:
    """`path` lies in `base`, also once every symbolic link is followed. The one place links may lead: a hub
    snapshot's files are links into the same repo's blobs/ folder."""
    if not path.is_relative_to(base):
        return False
    real, roots = Path(os.path.realpath(path)), [Path(os.path.realpath(base))]
    parts = base.parts
    if "snapshots" in parts:  # <cache>/datasets--org--name/snapshots/<revision>/...
        repo = Path(*parts[: parts.index("snapshots")])
        roots.append(Path(os.path.realpath(repo / "blobs")))
    return any(real == root or real.is_relative_to(root) for root in roots)


def _embedded(value, column: str) -> bytes | None:
    """The bytes of an image stored in the row itself, or None for a path."""
    from PIL import Image

    if isinstance(value, Image.Image):  # a hub dataset's decoded Image feature
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
        return value["bytes"]
    # M3IT-style raw base64: long, and without the "." every image file name has (base64 has no ".")
    if isinstance(value, str) and (value.startswith("data:image") or (len(value) >= 64 and "." not in value)):
        try:
            return base64.b64decode(
                value.split(",", 1)[1] if value.startswith("data:") else value, validate=True
            )
        except (binascii.Error, ValueError, IndexError):
            raise BadRow(column, "neither an image path nor a base64-encoded image") from None
    return None


def _unreadable(source) -> str | None:
    """Why Pillow cannot read the image (a path or a file object), or None. `verify` checks the data."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _no_bombs(), Image.open(source) as image:
            image.verify()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return (
            f"too large: over {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's limit against decompression bombs"
        )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


@contextlib.contextmanager
def _no_bombs():
    """Pillow warns at MAX_IMAGE_PIXELS and refuses twice that; both are a bad row here, never memory spent."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def load_rgb(path: str):
    """The image (a path or a data: URI) as RGB; a file that vanished or broke after `prepare` is a DataError
    naming it."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(base64.b64decode(path[len(DATA_URI) :])) if path.startswith(DATA_URI) else path
    try:
        with _no_bombs(), Image.open(source) as image:
            return image.convert("RGB")
    except (
        UnidentifiedImageError,
        OSError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise DataError(
            f"cannot read image ({str(exc).splitlines()[0]}); re-run `ftcli prepare`", file=path
        ) from None
