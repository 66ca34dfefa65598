"""load_image: modes, orientation, limits and every way a file can be bad."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputImageError
from backend.image_io import encode_jpeg, encode_png, load_image


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height 1-bit grey pixels, with no real data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bad(source, **kw) -> InputImageError:
    with pytest.raises(InputImageError) as info:
        load_image(source, **kw)
    err = info.value
    assert err.code == "bad_image" and err.hint
    return err


# --------------------------------------------------------------------------- good inputs


def test_rgb_jpeg_from_bytes_str_and_path(astronaut_image, tmp_path):
    data = encode_jpeg(astronaut_image, quality=95)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    from_bytes = load_image(data)
    assert from_bytes.shape == (512, 512, 3) and from_bytes.dtype == np.uint8
    assert from_bytes.flags.c_contiguous
    np.testing.assert_array_equal(load_image(str(path)), from_bytes)
    np.testing.assert_array_equal(load_image(path), from_bytes)
    assert np.abs(from_bytes.astype(int) - astronaut_image).mean() < 3


def test_exif_orientation_6_rotates_clockwise():
    stored = np.zeros((64, 100, 3), np.uint8)  # H=64, W=100 as stored
    stored[:32, :50] = (255, 0, 0)  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(data)
    assert out.shape == (100, 64, 3)  # portrait after rotation
    top_right = out[:40, -24:].reshape(-1, 3).mean(axis=0)
    bottom_left = out[-40:, :24].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 50  # the red corner went to the top right
    assert bottom_left.max() < 30


def test_grey_L():
    out = load_image(_save(Image.new("L", (80, 70), 77)))
    assert out.shape == (70, 80, 3)
    assert np.all(out == 77)


def test_grey_alpha_LA_composited_on_white():
    la = np.zeros((64, 96, 2), np.uint8)
    la[..., 0] = 100
    la[:, :32, 1] = 0  # transparent -> white
    la[:, 32:64, 1] = 255  # opaque -> 100
    la[:, 64:, 1] = 128  # half -> 100 * 128/255 + 255 * 127/255
    out = load_image(_save(Image.fromarray(la, mode="LA")))
    assert np.all(out[:, :32] == 255)
    assert np.all(out[:, 32:64] == 100)
    assert np.all(out[:, 64:] == round(100 * 128 / 255 + 255 * 127 / 255))


def test_rgba_composited_on_white():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = (10, 20, 200)
    rgba[:32, :, 3] = 255
    out = load_image(_save(Image.fromarray(rgba, mode="RGBA")))
    assert np.all(out[:32] == (10, 20, 200))
    assert np.all(out[32:] == 255)


def test_palette_with_transparency():
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black, 1 red
    pal.paste(1, (0, 0, 64, 32))
    out = load_image(_save(pal, transparency=0))  # index 0 is transparent
    assert np.all(out[:32] == (255, 0, 0))
    assert np.all(out[32:] == 255)  # transparent black became white, not black


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(cmyk, "JPEG", quality=95))
    mean = out.reshape(-1, 3).mean(axis=0)
    assert mean[0] > 220 and mean[1] < 40 and mean[2] < 40


def test_16bit_grey_png_is_scaled_not_clipped():
    values = np.array([0, 257, 1000, 32768, 65535], np.uint16)
    grey16 = np.tile(np.repeat(values, 16), (64, 1))  # [64, 80]
    img = Image.fromarray(grey16)
    assert img.mode == "I;16"
    out = load_image(_save(img))
    row = out[0, ::16, 0]
    np.testing.assert_array_equal(row, [0, 1, 4, 128, 255])  # round(v * 255 / 65535)
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_32bit_integer_outside_16bit_range_is_refused():
    arr = np.full((64, 64), 70000, np.int32)
    err = _bad(_save(Image.fromarray(arr), "TIFF"))
    assert "32-bit integer" in err.message


# --------------------------------------------------------------------------- bad inputs


def test_truncated_jpeg(astronaut_image):
    data = encode_jpeg(astronaut_image)
    err = _bad(data[: len(data) // 2])
    assert "truncated or corrupt" in err.message


def test_random_bytes_are_not_an_image():
    err = _bad(np.random.default_rng(0).bytes(5000))
    assert "not an image" in err.message


def test_postscript_is_never_opened():
    # EPS would make Pillow run Ghostscript; it must be refused like any unknown format.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"
    assert "not an image" in _bad(eps).message


def test_empty_bytes():
    assert "empty" in _bad(b"").message


def test_decompression_bomb_beyond_pillow_limit():
    data = _png_header_only(100_000, 100_000)
    assert len(data) < 100
    assert "decompression bomb" in _bad(data).message


def test_decompression_bomb_in_pillow_warning_band_raises_without_warning():
    # 100 MP: Pillow only warns (its limit is ~89 MP, error at twice that).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _bad(_png_header_only(10_000, 10_000))
    assert "decompression bomb" in err.message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_declared_pixels_over_our_limit_refused_before_decoding():
    err = _bad(_png_header_only(7000, 7000))  # 49 MP > 40 MP, below Pillow's own limit
    assert "7000x7000" in err.message and "decompression bomb" in err.message


def test_per_call_pixel_limit(astronaut_image):
    data = encode_png(astronaut_image)
    err = _bad(data, max_pixels=100_000)  # 512 * 512 = 262144
    assert "512x512" in err.message and "0.1 megapixels" in err.message
    assert load_image(data, max_pixels=512 * 512).shape == (512, 512, 3)


def test_too_many_bytes(tmp_path):
    data = _save(Image.new("RGB", (128, 128), (1, 2, 3)))
    assert "limit is" in _bad(data, max_bytes=len(data) - 1).message
    path = tmp_path / "big.png"
    path.write_bytes(data)
    assert "MiB" in _bad(path, max_bytes=100).message


def test_too_small():
    err = _bad(_save(Image.new("RGB", (32, 200))))
    assert "32x200" in err.message and "at least 64" in err.message


def test_missing_file(tmp_path):
    assert "No file" in _bad(tmp_path / "nope.jpg").message


def test_wrong_source_type_is_a_programming_error():
    with pytest.raises(TypeError):
        load_image(12345)


# --------------------------------------------------------------------------- encoders


def test_encode_png_roundtrip_and_jpeg_close(astronaut_image):
    np.testing.assert_array_equal(load_image(encode_png(astronaut_image)), astronaut_image)
    jpeg = load_image(encode_jpeg(astronaut_image, quality=90))
    assert np.abs(jpeg.astype(int) - astronaut_image).mean() < 4
    with pytest.raises(ValueError):
        encode_png(astronaut_image.astype(np.float32))
