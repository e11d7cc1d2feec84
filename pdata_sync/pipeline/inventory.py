"""The archive's inventory: the catalog's rows of a clinic, exported as Parquet or CSV for
a person or a query engine (DuckDB, pandas) to read (``pdata-sync inventory``). No names and
no paths on the share: key, patientGuid, image id, the DICOM UIDs, modality, acquisition
date, size, SHA-256, state, when uploaded and verified, and the Object Lock date.

The file is written as every file on the worker (pdata_sync.base.local_files): owner-only,
never through a symbolic link, never over a file with other bytes.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pdata_sync.base.clock import aware
from pdata_sync.base.errors import ConfigError
from pdata_sync.base.local_files import write_new
from pdata_sync.catalog import INVENTORY_COLUMNS, ClinicImages

FORMATS = (".parquet", ".csv")


def check_out(path: str | Path) -> Path:
    """The output file, refused unless it ends in .parquet or .csv."""
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"inventory: {out.name}: the file must end in .parquet or .csv")
    return out


def _text(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def write_inventory(images: ClinicImages, path: str | Path) -> int:
    """Write ``images``' inventory to ``path`` (.parquet or .csv); returns the row count."""
    out = check_out(path)
    rows = images.inventory()
    if out.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=INVENTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _text(v) for k, v in row.items()} for row in rows)
        write_new(out, buffer.getvalue().encode("utf-8"))
        return len(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("key", pa.string()),
            ("patient_guid", pa.string()),
            ("image_id", pa.int64()),
            ("study_instance_uid", pa.string()),
            ("series_instance_uid", pa.string()),
            ("sop_instance_uid", pa.string()),
            ("modality", pa.string()),
            ("acquisition_date", pa.string()),
            ("size", pa.int64()),
            ("sha256", pa.string()),
            ("state", pa.string()),
            ("uploaded_at", pa.timestamp("us", tz="UTC")),
            ("verified_at", pa.timestamp("us", tz="UTC")),
            ("retain_until", pa.date32()),
        ]
    )
    # SQLite hands timestamps back without a zone; the catalog writes UTC
    aware_rows = [
        {k: aware(v) if isinstance(v, datetime) else v for k, v in row.items()} for row in rows
    ]
    table = pa.Table.from_pylist(aware_rows, schema=schema)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_new(out, buffer.getvalue().to_pybytes())
    return len(rows)
