"""The one renderer behind thumbnails and previews: pydicom's test corpus in every transfer
syntax pdata-sync can decode, the display pipeline, and files it must report, not crash on."""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pdata_sync.viewer.render import (
    THUMBNAIL_MAX_SIDE,
    RenderError,
    _native_frame,
    render,
    stride_for,
)

CORPUS = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")

# Renderable files of pydicom's own test corpus, by transfer syntax.
RENDERABLE = {
    "JPEG baseline": [
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "examples_ybr_color.dcm",
    ],
    "JPEG lossless": ["SC_rgb_jpeg_gdcm.dcm"],
    "JPEG-LS": [
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
        "SC_rgb_jls_lossy_line.dcm",
    ],
    "JPEG 2000": ["MR_small_jp2klossless.dcm", "693_J2KI.dcm", "GDCMJ2K_TextGBR.dcm"],
    "RLE": ["MR_small_RLE.dcm", "SC_rgb_rle_16bit_2frame.dcm"],
    "uncompressed": [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "examples_palette.dcm",
        "image_dfl.dcm",
    ],
}
# What cannot be drawn, and the reason that must be given.
UNRENDERABLE = {
    "JPGExtended.dcm": "JPEG Extended",  # 12-bit: only the GPL pylibjpeg-libjpeg decodes it
    "MR_truncated.dcm": "less than expected",
    "rtplan.dcm": "no pixel data",
    "README.txt": "not a readable DICOM file",
    "badVR.dcm": "cannot draw",
}


def corpus(name: str) -> bytes:
    with open(os.path.join(CORPUS, name), "rb") as fh:
        return fh.read()


@pytest.mark.parametrize(
    "name", [n for names in RENDERABLE.values() for n in names], ids=lambda n: n
)
def test_corpus_file_renders_as_small_jpeg(name):
    ds = pydicom.dcmread(os.path.join(CORPUS, name))
    out = render(corpus(name))
    with Image.open(io.BytesIO(out)) as image:
        assert image.format == "JPEG"
        assert max(image.size) <= THUMBNAIL_MAX_SIDE
        # proportions kept (within a pixel of rounding)
        ratio = ds.Columns / ds.Rows
        assert abs(image.width - image.height * ratio) <= max(1.0, ratio)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 5, f"{name} rendered blank"


def test_whole_corpus_renders_or_is_reported():
    """Every file either becomes a thumbnail or raises RenderError (never anything else),
    and exactly the known unrenderable ones are reported."""
    reported = {}
    rendered = 0
    for name in sorted(os.listdir(CORPUS)):
        if os.path.isdir(os.path.join(CORPUS, name)):
            continue
        try:
            render(corpus(name))
            rendered += 1
        except RenderError as exc:
            reported[name] = str(exc)
    images = {
        n for n in reported if not reported[n].startswith(("no pixel data", "not a readable"))
    }
    assert images == {
        "JPEG-lossy.dcm",  # 12-bit JPEG Extended
        "JPGExtended.dcm",  # 12-bit JPEG Extended
        "JPEG2000-embedded-sequence-delimiter.dcm",  # declares an absurd size
        "MR_truncated.dcm",
        "badVR.dcm",
        "meta_missing_tsyntax.dcm",
        "nested_priv_SQ.dcm",
    }, reported
    assert rendered == 57


@pytest.mark.parametrize("name,reason", UNRENDERABLE.items())
def test_unrenderable_file_is_reported_with_its_reason(name, reason):
    with pytest.raises(RenderError, match=reason):
        render(corpus(name))


def synthetic(values: np.ndarray, **attrs) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = values.astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(render(data, fmt="PNG"))).convert("L"), dtype=int)


RAMP = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (64, 1))  # 64 x 256, dark to light


def test_monochrome2_dark_is_dark_and_monochrome1_is_inverted():
    plain = grey(synthetic(RAMP))
    inverted = grey(synthetic(RAMP, PhotometricInterpretation="MONOCHROME1"))
    assert plain[:, 0].mean() < 10 and plain[:, -1].mean() > 245
    assert inverted[:, 0].mean() > 245 and inverted[:, -1].mean() < 10


def test_window_clips_outside_and_stretches_inside():
    # window 1000-2000: everything below is black, above white, the middle mid-grey
    out = grey(synthetic(RAMP, WindowCenter=1500, WindowWidth=1000))
    column = {v: i for i, v in enumerate(RAMP[0])}
    assert out[:, column[512]].mean() < 3
    assert out[:, column[3008]].mean() > 252
    assert 110 < out[:, column[1504]].mean() < 145


def test_modality_lut_comes_before_the_window():
    # stored 0..4080 with slope 2, intercept -1000 -> 2 * v - 1000; window 500-1500 in
    # output units covers stored 750-1250
    out = grey(
        synthetic(RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=1000)
    )
    column = {v: i for i, v in enumerate(RAMP[0])}
    assert out[:, column[704]].mean() < 3
    assert out[:, column[1296]].mean() > 252


def test_large_image_is_shrunk_to_256_on_its_longest_side():
    big = np.tile(np.arange(0, 4096, 4, dtype=np.uint16), (600, 1))  # 600 x 1024
    with Image.open(io.BytesIO(render(synthetic(big)))) as image:
        assert image.size == (256, 150)


def test_declared_size_beyond_the_limit_is_refused_before_decoding():
    data = synthetic(RAMP)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns = 20000, 20000
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(RenderError, match="too large"):
        render(out.getvalue())


# The strided read of uncompressed pixel data must give exactly what pydicom decodes.
NATIVE = ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small.dcm"]


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("step", [1, 3])
def test_strided_read_equals_pydicom_decode(name, step):
    ds = pydicom.dcmread(io.BytesIO(corpus(name)))
    fast = _native_frame(ds, step)
    assert fast is not None, "an uncompressed monochrome file takes the strided read"
    np.testing.assert_array_equal(fast, ds.pixel_array[::step, ::step])


@pytest.mark.parametrize(
    "allocated,stored,signed",
    [(16, 12, 0), (16, 12, 1), (16, 16, 1), (8, 8, 0), (8, 6, 1), (16, 10, 0)],
)
def test_strided_read_masks_and_sign_extends_like_pydicom(allocated, stored, signed):
    # every bit pattern, high bits above BitsStored included (overlays or junk live there)
    rng = np.random.default_rng(allocated * 100 + stored)
    raw = rng.integers(0, 1 << allocated, size=(40, 60), dtype=np.uint32)
    ds = pydicom.dcmread(io.BytesIO(synthetic(raw.astype("<u2"))))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = signed
    ds.PixelData = raw.astype(f"<u{allocated // 8}").tobytes()
    fast = _native_frame(ds, 1)
    assert fast is not None
    np.testing.assert_array_equal(fast, ds.pixel_array)


def test_compressed_or_colour_files_are_left_to_pydicom():
    for name in ("MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm", "examples_palette.dcm"):
        assert _native_frame(pydicom.dcmread(io.BytesIO(corpus(name))), 1) is None, name


def test_a_large_uncompressed_image_is_drawn_from_every_nth_pixel():
    # 1,500 x 3,000 (a panoramic): rows kept at a stride of 5, then shrunk to 256 x 128;
    # a half-black, half-white image stays so
    big = np.zeros((1500, 3000), dtype=np.uint16)
    big[:, 1500:] = 4095
    out = np.asarray(Image.open(io.BytesIO(render(synthetic(big), fmt="PNG"))).convert("L"))
    assert out.shape == (128, 256)
    assert out[:, :120].max() < 3 and out[:, 136:].min() > 252
    assert stride_for(1500, 3000, THUMBNAIL_MAX_SIDE) == 5
    assert stride_for(340, 480, THUMBNAIL_MAX_SIDE) == 1
