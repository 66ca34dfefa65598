"""Load and validate user photos; encode arrays back to PNG/JPEG bytes.

Everything a user uploads passes through :func:`load_image` before any model sees it.
The function turns any photo Pillow can read safely into one shape, ``[H, W, 3]`` uint8
RGB, upright as the camera meant it (EXIF orientation applied), and turns every way a
file can be unusable into :class:`backend.errors.InputImageError` with a message a user
can act on. No Pillow exception escapes.

What it guards against, in order:

1. payloads larger than ``max_bytes`` (checked before reading a file from disk);
2. bytes that are not an image in one of the allowed formats (:data:`ALLOWED_FORMATS`;
   formats that call out to other programs, such as EPS, are never opened);
3. decompression bombs: the declared width x height is checked against ``max_pixels``
   from the header alone, before any pixel is decoded (Pillow's own global bomb check is
   turned into an error too);
4. images smaller than ``min_side`` on their shorter side;
5. truncated or corrupt pixel data.

Modes are mapped to RGB like this:

- ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: Pillow's conversion;
- anything with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency entry, ...):
  composited over white, so transparent backgrounds become white rather than black;
- 16-bit grey (``I;16*``) and ``I`` holding 16-bit values: scaled by 255/65535 with
  rounding (Pillow's ``convert("L")`` would clip everything above 255 to white);
- ``I`` with values outside 0..65535 and float ``F`` images are refused: their range
  means nothing without extra information.

Usage::

    img = load_image(Path("me.jpg"))          # [H, W, 3] uint8
    png = encode_png(img)                     # bytes, for a job folder or the wire
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import InputImageError

log = logging.getLogger(__name__)

# Formats Pillow may open; all are decoded inside Pillow itself. (Phones' multi-picture
# JPEGs open through "JPEG" and report format "MPO"; naming "MPO" here would be a KeyError.)
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 2**20
DEFAULT_MIN_SIDE = 64

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_GREY = {"I;16", "I;16L", "I;16B", "I;16N"}


def load_image(
    source: bytes | bytearray | memoryview | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Read a photo from bytes or a file path into an upright ``[H, W, 3]`` uint8 RGB array.

    Args:
        source: encoded image bytes, or the path of an image file.
        max_pixels: refuse images whose declared width x height exceeds this (default 40 MP).
            Checked from the header, before decoding.
        max_bytes: refuse payloads or files larger than this (default 50 MiB).
        min_side: refuse images whose shorter side (after EXIF rotation) is below this.

    Raises:
        InputImageError: for every reason the photo cannot be used; ``message`` says which.
        TypeError: if ``source`` is not bytes or a path (a programming error).
    """
    data = _read_source(source, max_bytes)
    with warnings.catch_warnings():
        # Pillow warns (rather than raises) for images between its limit and twice it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError as exc:
            raise InputImageError(
                "The file is not an image that can be read: expected JPEG, PNG, WebP, BMP, TIFF or GIF.",
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(None, max_pixels) from exc
        except Exception as exc:  # corrupt headers surface as many exception types
            raise InputImageError(f"The image header is corrupt and cannot be read ({exc}).") from exc

        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise _bomb_error((width, height), max_pixels)
            if min(width, height) < min_side:
                raise _too_small_error((width, height), min_side)
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb_error((width, height), max_pixels) from exc
            except Exception as exc:
                raise InputImageError(
                    f"The image data is truncated or corrupt and cannot be decoded ({exc}).",
                    hint="Re-export or re-download the photo, then try again.",
                ) from exc
            img = _apply_exif_orientation(img)
            try:
                rgb = _to_rgb_array(img)
            except InputImageError:
                raise
            except Exception as exc:
                raise InputImageError(
                    f"The image (mode {img.mode}) could not be converted to RGB ({exc}).",
                    hint="Re-save the photo as an 8-bit RGB JPEG or PNG.",
                ) from exc
    return rgb


def encode_png(img: np.ndarray, *, compress_level: int = 6) -> bytes:
    """Encode an ``[H, W, 3]`` (or ``[H, W]``/``[H, W, 4]``) uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(_check_uint8_image(img)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(img: np.ndarray, *, quality: int = 92) -> bytes:
    """Encode an ``[H, W, 3]`` (or ``[H, W]``) uint8 array as JPEG bytes."""
    arr = _check_uint8_image(img)
    if arr.ndim == 3 and arr.shape[2] == 4:
        raise ValueError("JPEG has no alpha channel; pass [H, W, 3]")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------- helpers


def _read_source(source, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise _too_many_bytes_error(len(data), max_bytes)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise InputImageError(f"{path} is not a file.", hint="Pass the path of a photo file.")
            if size > max_bytes:
                raise _too_many_bytes_error(size, max_bytes)
            with path.open("rb") as f:
                data = f.read(max_bytes + 1)
        except FileNotFoundError as exc:
            raise InputImageError(f"No file at {path}.", hint="Check the photo's path.") from exc
        except PermissionError as exc:
            raise InputImageError(
                f"Cannot read {path}: permission denied.", hint="Check the file's permissions."
            ) from exc
        except OSError as exc:
            raise InputImageError(
                f"Cannot read {path}: {exc.strerror or exc}.", hint="Check the photo's path."
            ) from exc
        if len(data) > max_bytes:  # the file grew between stat and read
            raise _too_many_bytes_error(len(data), max_bytes)
    else:
        raise TypeError(f"load_image expects bytes or a path, got {type(source).__name__}")
    if not data:
        raise InputImageError("The image is empty (0 bytes).")
    return data


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says. A broken EXIF block is logged and ignored:
    the pixels are still a usable photo, only its rotation is unknown."""
    try:
        out = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on a broken EXIF block
        log.warning("Ignoring unreadable EXIF orientation (%s); using the image as stored.", exc)
        return img
    return img if out is None else out


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in _SIXTEEN_BIT_GREY or mode == "I":
        grey = np.asarray(img).astype(np.int64)  # [H, W]
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise InputImageError(
                f"The image holds 32-bit integer values ({grey.min()}..{grey.max()}) that cannot be mapped to colours.",
                hint="Re-save the photo as an 8-bit or 16-bit JPEG or PNG.",
            )
        grey8 = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # rounds v * 255 / 65535
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    if mode == "F":
        raise InputImageError(
            "The image holds floating-point values, whose brightness range is unknown.",
            hint="Re-save the photo as an 8-bit or 16-bit JPEG or PNG.",
        )
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)  # [H, W, 4]
        alpha = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)  # over white
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _check_uint8_image(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"expected [H, W], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _bomb_error(size: tuple[int, int] | None, max_pixels: int) -> InputImageError:
    limit = f"{max_pixels / 1e6:.1f} megapixels"
    if size is None:
        what = "The image declares more pixels than Pillow will decode"
    else:
        what = f"The image declares {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.1f} megapixels)"
    return InputImageError(
        f"{what}, more than the {limit} allowed; it may be a decompression bomb.",
        hint=f"Resize the photo to at most {limit} (for example 4000x3000) and try again.",
    )


def _too_small_error(size: tuple[int, int], min_side: int) -> InputImageError:
    return InputImageError(
        f"The image is only {size[0]}x{size[1]} pixels; its shorter side must be at least {min_side} pixels.",
        hint="Use a larger photo; a face of 256 pixels or more gives the best results.",
    )


def _too_many_bytes_error(n: int, max_bytes: int) -> InputImageError:
    return InputImageError(
        f"The image file is {n / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB.",
        hint="Save the photo as a JPEG, or resize it, so that it is smaller.",
    )
