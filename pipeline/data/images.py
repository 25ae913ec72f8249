"""Encoded images (PNG/JPEG bytes in a Parquet column) -> uint8 pixel rows, with Pillow.

A column holds either the bytes themselves (``binary``) or the Hugging Face ``datasets`` image
struct ``{bytes, path}``. Only the bytes are used: a path names a file on the machine that
wrote the set, and a path read from storage is never opened here. Only PNG and JPEG are
decoded (every other format Pillow knows is one more parser fed untrusted input), and an
image larger than :data:`MAX_PIXELS` is refused before its pixels are decoded.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DataError

FORMATS = ("PNG", "JPEG")
#: Larger images are refused unread (a decompression bomb is a few KB of PNG).
MAX_PIXELS = 4096 * 4096
#: Pillow's mode for a channel count.
MODES = {1: "L", 3: "RGB"}


def image_bytes(column: pa.Array, name: str, where: str) -> pa.Array:
    """The encoded bytes of an image column: the column itself, or the struct's ``bytes``."""
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise DataError(f"{where}: image column {name!r} is a struct without a 'bytes' field")
        data = pc.struct_field(column, "bytes")  # a null struct gives a null here
    else:
        data = column
    if data.null_count:
        first = int(np.flatnonzero(data.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{where}: row {first} of image column {name!r} has no image bytes ({data.null_count}"
            " rows; a path alone is not read); store the bytes in the file (Hugging Face:"
            " ds.cast_column(col, Image()) before to_parquet keeps them embedded)"
        )
    return data


def is_image_type(tp: pa.DataType) -> bool:
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    if pa.types.is_struct(tp):
        index = tp.get_field_index("bytes")
        return index >= 0 and any(check(tp.field(index).type) for check in binary)
    return any(check(tp) for check in binary)


def _pillow():
    """Pillow, with its own decompression-bomb limit set to ours: it refuses (raises) above
    twice its limit, warns above it; ours is checked below, so its limit must not be lower."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    return Image


def open_image(data: bytes, where: str):
    """A Pillow image, header read and size checked, pixels not yet decoded."""
    Image = _pillow()
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise DataError(
            f"{where}: the image declares more than the {MAX_PIXELS:,} pixels this reader"
            " decodes; shrink the images first"
        ) from None
    except Exception as exc:  # a decoder fed untrusted bytes fails in any way
        raise DataError(
            f"{where}: not a PNG or JPEG image ({type(exc).__name__}: {exc}); fix or remove the row"
        ) from None
    if image.width * image.height > MAX_PIXELS:
        raise DataError(
            f"{where}: image of {image.width}x{image.height} pixels is larger than the"
            f" {MAX_PIXELS:,} this reader decodes; shrink the images first"
        )
    return image


def channels_of(image) -> int:
    """1 for grey modes (with or without alpha), else 3."""
    return 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def decode(data: pa.Array, shape: tuple[int, int, int], fit: str, where: str) -> np.ndarray:
    """Each encoded image as one row of ``C*H*W`` uint8 pixels (channels first).

    ``fit``: ``resize`` stretches to (H, W); ``crop`` scales the shorter side and cuts the
    centre (Pillow's ``ImageOps.fit``)."""
    from PIL import Image, ImageOps

    channels, height, width = shape
    out = np.empty((len(data), channels, height, width), np.uint8)
    for row, value in enumerate(data):
        where_row = f"{where}, row {row}"
        image = open_image(value.as_py(), where_row)
        try:
            image = image.convert(MODES[channels])
            if image.size != (width, height):
                if fit == "crop":
                    image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
                else:
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
        except Exception as exc:  # Pillow's decoders raise SyntaxError too
            raise DataError(
                f"{where_row}: the image does not decode ({type(exc).__name__}: {exc})"
            ) from None
        out[row] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out.reshape(len(data), -1)
