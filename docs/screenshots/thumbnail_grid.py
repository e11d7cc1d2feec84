"""Draw docs/screenshots/thumbnails.png: pdata-sync's thumbnails of pydicom's test corpus, one
per transfer syntax family, each labelled, and the files it reports as not drawable.

Run: .venv/bin/python docs/screenshots/thumbnail_grid.py
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
from PIL import Image, ImageDraw

from pdata_sync.viewer.render import RenderError, render

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
SHOWN = [
    ("uncompressed", "CT_small.dcm"),
    ("uncompressed, palette", "examples_palette.dcm"),
    ("big endian", "MR_small_bigendian.dcm"),
    ("deflated", "image_dfl.dcm"),
    ("JPEG baseline", "SC_rgb_jpeg_dcmtk.dcm"),
    ("JPEG baseline YBR", "examples_ybr_color.dcm"),
    ("JPEG lossless", "SC_rgb_jpeg_gdcm.dcm"),
    ("JPEG-LS lossless", "MR_small_jpeg_ls_lossless.dcm"),
    ("JPEG-LS near-lossless", "JPEGLSNearLossless_16.dcm"),
    ("JPEG 2000", "693_J2KI.dcm"),
    ("JPEG 2000 lossless", "MR_small_jp2klossless.dcm"),
    ("RLE", "MR_small_RLE.dcm"),
]
CELL, LABEL = 180, 22


def main() -> None:
    columns = 6
    rows = -(-len(SHOWN) // columns)
    sheet = Image.new("RGB", (columns * CELL, rows * (CELL + LABEL)), "black")
    draw = ImageDraw.Draw(sheet)
    for n, (label, name) in enumerate(SHOWN):
        x, y = (n % columns) * CELL, (n // columns) * (CELL + LABEL)
        thumb = Image.open(io.BytesIO(render((CORPUS / name).read_bytes())))
        scale = (CELL - 10) / max(thumb.size)  # small corpus images are enlarged for display
        thumb = thumb.resize((round(thumb.width * scale), round(thumb.height * scale)))
        sheet.paste(thumb.convert("RGB"), (x + (CELL - thumb.width) // 2, y + 5))
        draw.text((x + 6, y + CELL + 4), label, fill="white")
    out = Path(__file__).with_name("thumbnails.png")
    sheet.save(out, optimize=True)
    print(out)
    for name in sorted(os.listdir(CORPUS)):
        try:
            render((CORPUS / name).read_bytes())
        except RenderError as exc:
            if not str(exc).startswith(("no pixel data", "not a readable")):
                print(f"not drawable: {name}: {exc}")


if __name__ == "__main__":
    main()
