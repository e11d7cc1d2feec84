"""Render a DICOM image to a small JPEG or PNG: thumbnails in S3 and local previews.

One renderer for every picture pdata-sync makes (docs/viewer.md): the first frame, through
the modality LUT (rescale slope/intercept), then the VOI LUT or window the file carries (else
its own minimum to maximum), MONOCHROME1 inverted so bone is always light, colour kept as
RGB, longest side at most ``max_side`` pixels. Pure: bytes in, bytes out.

Compressed pixel data decodes through pydicom's plugins: Pillow (JPEG baseline, JPEG 2000),
GDCM (JPEG lossless, JPEG-LS, JPEG 2000) and pydicom's own RLE decoder. 12-bit JPEG
Extended needs pylibjpeg-libjpeg, which is GPLv3 and not installed: such files are reported
as not renderable, like any other file that cannot be drawn.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

THUMBNAIL_MAX_SIDE = 256
JPEG_QUALITY = 85
# Shrink by whole factors with a box filter while more than this factor remains, then the
# final filter for the rest (Pillow's ``reducing_gap``). 1.0 instead of Pillow's 2.0: at
# most a grey level or two of difference at 256 px, for less than half the time.
REDUCING_GAP = 1.0
# The final filter. A thumbnail is looked at for a glance, and drawing it is most of what
# thumbnails add to a sync (docs/viewer.md): an area average (BOX) costs 0.27 ms on a
# 340 x 480 image where Lanczos costs 1.05 ms, for a mean difference of 1.6 grey levels.
# A preview (``retrieve --previews``) is looked at closely: Lanczos.
THUMBNAIL_FILTER = Image.Resampling.BOX
PREVIEW_FILTER = Image.Resampling.LANCZOS
# A header declaring more than this per frame is refused before anything is decoded (a
# full-mouth panoramic is about 3,000 x 1,500 = 4.5 million).
MAX_PIXELS = 100_000_000
LUT_MAX_ENTRIES = 1 << 20


class RenderError(Exception):
    """The file cannot be drawn; the message says why (never a patient detail)."""


# Uncompressed transfer syntaxes: the pixel data is the array itself (Deflated is inflated
# by pydicom when the file is read).
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "<",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": "<",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99": "<",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2": ">",  # Explicit VR Big Endian
}


def stride_for(rows: int, columns: int, max_side: int) -> int:
    """Keep every n-th row and column: the largest n that still leaves at least twice
    ``max_side`` pixels on the longest side, so the final filter has pixels to average."""
    return max(1, max(rows, columns) // (2 * max_side))


def _native_frame(ds: pydicom.Dataset, step: int) -> np.ndarray | None:
    """The first frame of uncompressed monochrome pixel data, every ``step``-th row and
    column, read straight from the bytes already in memory; None when the file is anything
    else (pydicom then decodes it). The same values as pydicom's ``pixel_array``: bits
    above BitsStored are masked off, signed values sign-extended from BitsStored."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    order = NATIVE_SYNTAXES.get(syntax)
    if order is None or int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        return None
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        return None
    needed = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")
    if any(getattr(ds, name, None) is None for name in needed):
        return None  # pydicom names what is missing
    rows, columns = int(ds.Rows), int(ds.Columns)
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    data = ds.PixelData
    if allocated not in (8, 16) or not 1 <= stored <= allocated or rows < 1 or columns < 1:
        return None
    if not isinstance(data, bytes) or len(data) < rows * columns * allocated // 8:
        return None  # pydicom says what is wrong with it
    unsigned_type = np.dtype(f"{order}u{allocated // 8}")
    frame = np.frombuffer(data, unsigned_type, count=rows * columns).reshape(rows, columns)
    frame = frame[::step, ::step]
    spare = allocated - stored
    if not signed:
        return frame & ((1 << stored) - 1) if spare else frame
    as_signed = np.dtype(f"{order}i{allocated // 8}")
    if not spare:
        return frame.view(as_signed)
    return (frame << spare).view(as_signed) >> spare


def _first_frame(ds: pydicom.Dataset) -> np.ndarray:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about padding and odd VRs
            if frames > 1:
                return np.asarray(pydicom.pixels.pixel_array(ds, index=0))
            return np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same here
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise RenderError(f"pixel data not decodable ({name}): {_brief(exc)}") from exc


def _brief(exc: BaseException) -> str:
    """An exception as one short line (pydicom's plugin errors span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _to_8bit(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64, copy=False)
    low, high = float(np.min(values)), float(np.max(values))
    if not np.isfinite(low) or not np.isfinite(high):
        raise RenderError("pixel values are not finite")
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _first(value: Any) -> float:
    """The first of a possibly multi-valued DS element, as a float."""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _window(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The file's first window (DICOM PS3.3 C.11.2.1.2, LINEAR or LINEAR_EXACT) to 0-255."""
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    if str(getattr(ds, "VOILUTFunction", "LINEAR")).strip() == "LINEAR_EXACT":
        scaled = (values - center) / max(width, 1e-9) + 0.5
    else:
        scaled = (values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def grey_levels(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """8-bit display values of one monochrome frame: the modality LUT, then the file's VOI
    LUT or window (else its own minimum to maximum), MONOCHROME1 inverted."""
    if pixels.dtype.kind in "iu" and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        if high - low <= LUT_MAX_ENTRIES:
            # Integer pixels: run the pipeline once per stored value, then look each pixel
            # up (several times faster than running it per pixel; same result, as the
            # minimum and maximum are among the stored values).
            table = _display(ds, np.arange(low, high + 1, dtype=np.int64))
            return np.take(table, np.subtract(pixels, low, dtype=np.int64))
    return _display(ds, pixels)


def _display(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = apply_modality_lut(stored, ds)
        if "VOILUTSequence" in ds:
            out = _to_8bit(np.asarray(apply_voi_lut(values, ds, index=0)))
        elif "WindowCenter" in ds and "WindowWidth" in ds and _window_usable(ds):
            out = _window(np.asarray(values, dtype=np.float64), ds)
        else:
            out = _to_8bit(np.asarray(values))
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return out


def _window_usable(ds: pydicom.Dataset) -> bool:
    try:
        _window(np.zeros(1), ds)
    except (TypeError, ValueError, IndexError):
        return False
    return str(getattr(ds, "VOILUTFunction", "LINEAR")).strip() in ("", "LINEAR", "LINEAR_EXACT")


def render(data: bytes, *, max_side: int = THUMBNAIL_MAX_SIDE, fmt: str = "JPEG") -> bytes:
    """The image in ``data`` (a DICOM Part 10 file) as JPEG or PNG bytes.

    Raises :class:`RenderError` when the file is not DICOM, has no image or cannot be decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        raise RenderError(f"not a readable DICOM file: {type(exc).__name__}") from exc
    if "PixelData" not in ds:
        raise RenderError("no pixel data (not an image)")
    return render_dataset(ds, max_side=max_side, fmt=fmt)


def render_dataset(ds: pydicom.Dataset, *, max_side: int, fmt: str = "JPEG") -> bytes:
    """Like :func:`render`, for a dataset already read (pixel data included)."""
    try:
        return _render_dataset(ds, max_side, fmt)
    except RenderError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed header must not stop a sync
        raise RenderError(f"cannot draw this image: {type(exc).__name__}: {_brief(exc)}") from exc


def _render_dataset(ds: pydicom.Dataset, max_side: int, fmt: str) -> bytes:
    pixels_declared = int(getattr(ds, "Rows", 0) or 0) * int(getattr(ds, "Columns", 0) or 0)
    if pixels_declared > MAX_PIXELS:
        raise RenderError(f"image too large to draw: {pixels_declared} pixels per frame")
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    step = stride_for(
        int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0), max_side
    )
    pixels = _native_frame(ds, step)
    if pixels is None:
        pixels = _first_frame(ds)
        if pixels.ndim in (2, 3):
            pixels = pixels[::step, ::step]
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip()
    if samples == 1 and photometric == "PALETTE COLOR":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = np.asarray(apply_color_lut(pixels, ds))
        samples = 3
    if samples == 1:
        if pixels.ndim != 2:
            raise RenderError(f"unexpected pixel array shape {pixels.shape}")
        image = Image.fromarray(grey_levels(ds, pixels), mode="L")
    elif samples == 3 and pixels.ndim == 3 and pixels.shape[-1] == 3:
        # pydicom returns RGB (YBR converted); scale other bit depths to 8 bits.
        rgb = pixels if pixels.dtype == np.uint8 else _to_8bit(pixels)
        image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    else:
        raise RenderError(f"unsupported image: {samples} samples per pixel")
    final = THUMBNAIL_FILTER if max_side <= THUMBNAIL_MAX_SIDE else PREVIEW_FILTER
    image.thumbnail((max_side, max_side), final, reducing_gap=REDUCING_GAP)
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def describe_image(data: bytes) -> dict[str, Any]:
    """Width and height of a rendered JPEG/PNG (for tests and reports)."""
    with Image.open(io.BytesIO(data)) as image:
        return {"format": image.format, "width": image.width, "height": image.height}
