"""Per-clinic configuration: one pydantic model, loaded from YAML or filled in the Prefect UI.

Nothing here reads the environment at import time. Secrets never live in this model: the
database password and AWS keys come from Prefect blocks (named here) or the environment.
"""

from __future__ import annotations

import re
import string
from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pdata_sync.base.bandwidth import Bandwidth, Window, overlapping, window_end
from pdata_sync.base.cpu import default_cpu_threads
from pdata_sync.base.errors import ConfigError
from pdata_sync.base.key_template import ambiguity
from pdata_sync.base.url_secrets import url_secret

DEFAULT_KEY_TEMPLATE = "images/{patient_guid}/{clinic_id}_{image_id}_{name}.dcm"
KEY_PLACEHOLDERS = {"patient_guid", "clinic_id", "image_id", "name"}
KEY_PREFIX = "images/{patient_guid}/"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$#@ ]{0,127}$")
_CLINIC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _sql_identifier(value: str) -> str:
    if not _IDENT.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain SQL table or column name "
            "(letters, digits and underscores, starting with a letter)"
        )
    return value


def _block_name(value: str | None) -> str | None:
    if value is not None and not _BLOCK_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Prefect block name (lower-case letters, digits and dashes)"
        )
    return value


def _url_without_password(value: str, block_field: str, env: str) -> URL:
    """Parse a SQLAlchemy URL, refusing one that carries a password (secrets never live in
    the config); the message names where the password belongs instead."""
    where = url_secret(value, http=False)
    if where:
        raise ValueError(
            f"the URL contains a secret ({where}); remove it and store the password in a "
            f"Prefect Secret block ({block_field}) or {env}"
        )
    try:
        url = make_url(value)
    except ArgumentError:
        # SQLAlchemy's message repeats the URL: never echo what may hold a secret
        raise ValueError("not a database URL SQLAlchemy understands") from None
    if url.password:
        raise ValueError(
            "the URL contains a secret (a password); remove it and store the password in a "
            f"Prefect Secret block ({block_field}) or {env}"
        )
    return url


def _no_secret_in_http_url(value: str) -> None:
    where = url_secret(value, http=True)
    if where:
        raise ValueError(
            f"the URL contains a secret ({where}); remove it: secrets come from Prefect "
            "blocks or the environment, never from the config"
        )


class _Model(BaseModel):
    # hide_input_in_errors: a refused value may be a secret (a URL with a password)
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, hide_input_in_errors=True
    )


class DatabaseConfig(_Model):
    """Where the Sidexis SQL Server database is, and which tables and columns to read."""

    url: str = Field(
        description=(
            "SQLAlchemy URL of the Sidexis database, without a password, e.g. "
            "mssql+pyodbc://sidexis@sidexis-host/SIDEXIS?driver=ODBC+Driver+18+for+SQL+Server"
        )
    )
    db_schema: str | None = Field(
        default="dbo",
        alias="schema",
        description="Schema of the Sidexis tables (dbo on SQL Server; empty for SQLite).",
    )
    password_secret_block: str | None = Field(
        default=None,
        description=(
            "Name of a Prefect Secret block holding the database password. Without it, the "
            "password is taken from the PDATA_SYNC_DB_PASSWORD environment variable, if set."
        ),
    )
    patient_table: str = Field("Patient", description="Sidexis patient table.")
    patient_id_column: str = Field("PatientId", description="Patient id (the P_ folder number).")
    card_id_column: str = Field("CardId", description="PMS chart number (CardId).")
    patient_deleted_column: str | None = Field(
        "IsDeleted", description="Deleted flag on patient rows; empty if the table has none."
    )
    media_table: str = Field("MediaBase", description="Sidexis media (image) table.")
    media_id_column: str = Field("MediaBaseId", description="Image id (the number in file names).")
    media_name_column: str = Field("Name", description="Image name.")
    media_deleted_column: str | None = Field(
        "IsDeleted", description="Deleted flag on media rows; empty if the table has none."
    )
    media_patient_column: str | None = Field(
        "PatientId",
        description="Patient id on media rows: an image whose row names another patient "
        "than its folder is not uploaded (a conflict); empty if the table has none.",
    )
    header_patient_id: Literal["folder_or_card", "folder", "card", "off"] = Field(
        "folder_or_card",
        description="What a file's own PatientID must name, or it is not uploaded (an "
        "identity conflict): its folder's Sidexis patient id or one of that patient's "
        "CardIds (folder_or_card), only the one or the other, or nothing is checked (off). "
        "An empty PatientID is accepted and counted. `pdata-sync probe` shows which rule "
        "a clinic's files follow.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_sqlalchemy_without_password(cls, value: str) -> str:
        _url_without_password(value, "database.password_secret_block", "PDATA_SYNC_DB_PASSWORD")
        return value

    @field_validator(
        "db_schema",
        "patient_deleted_column",
        "media_deleted_column",
        "media_patient_column",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "db_schema",
        "patient_table",
        "patient_id_column",
        "card_id_column",
        "patient_deleted_column",
        "media_table",
        "media_id_column",
        "media_name_column",
        "media_deleted_column",
        "media_patient_column",
    )
    @classmethod
    def _identifiers(cls, value: str | None) -> str | None:
        return None if value is None else _sql_identifier(value)

    @field_validator("password_secret_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        return _block_name(value)


class ResolverConfig(_Model):
    """The platform's CardId -> patientGuid resolver (docs/product-rules.md §5)."""

    url: str = Field(
        description="Full URL of the resolver, e.g. "
        "https://platform.example/api/app/patient-pms-resolver/resolve"
    )
    batch_size: int = Field(100, ge=1, le=1000, description="CardIds per resolver call.")
    timeout_seconds: float = Field(30.0, gt=0, le=600, description="Timeout of one call.")
    max_attempts: int = Field(6, ge=1, le=20, description="Tries per call on transient errors.")
    cache_ttl_hours: float = Field(
        24.0, ge=0, description="How long a resolution is reused across runs; 0 disables."
    )
    verify_tls: bool = Field(
        True, description="Verify the resolver's TLS certificate. Turn off only for testing."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        _no_secret_in_http_url(value)
        if not re.fullmatch(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


Encryption = Literal["AES256", "aws:kms"]


class ObjectLockConfig(_Model):
    """Retention no one can shorten: every image version is written with an S3 Object Lock
    until the date the retention rule gives it (docs/adr/0017-retention-rule.md)."""

    mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field(
        "COMPLIANCE",
        description="COMPLIANCE: no one, not even the account's root, can delete a locked "
        "version or shorten its date. GOVERNANCE: a user granted the permission to bypass "
        "governance retention can (the worker never is, ops/worker-iam-policy.json).",
    )
    years: int = Field(
        10, ge=1, le=100, description="Years an image is kept after the examination."
    )
    minors_until_age: int | None = Field(
        28,
        ge=1,
        le=100,
        description="For a patient younger than adult_age at the examination: kept at "
        "least until this birthday. Empty: no rule for minors.",
    )
    adult_age: int = Field(18, ge=1, le=100, description="The age of majority.")

    @model_validator(mode="after")
    def _ages(self) -> ObjectLockConfig:
        if self.minors_until_age is not None and self.minors_until_age < self.adult_age:
            raise ValueError("minors_until_age must not be below adult_age")
        return self


class S3Config(_Model):
    """Destination bucket and object naming."""

    bucket: str = Field(description="S3 bucket name.")
    region: str = Field("eu-central-1", description="AWS region of the bucket.")
    endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible server; empty for AWS S3."
    )
    key_template: str = Field(
        DEFAULT_KEY_TEMPLATE,
        description="Object key; must start with images/{patient_guid}/. Placeholders: "
        "{patient_guid}, {clinic_id}, {image_id}, {name}.",
    )
    aws_credentials_block: str | None = Field(
        None,
        description="Name of a Prefect AwsCredentials block. Without it, the standard AWS "
        "chain is used (environment variables, profile, instance role).",
    )
    server_side_encryption: Encryption | None = Field(
        None,
        description="Encryption at rest asked of S3 for every object pdata-sync writes "
        "(images, multipart uploads, thumbnails, copies into retired/): AES256 (keys S3 "
        "manages) or aws:kms (kms_key_id, else the account's default key). verify reports "
        "an image stored without it; the next sync writes the same bytes again, encrypted. "
        "Empty: the bucket's default.",
    )
    kms_key_id: str | None = Field(
        None, description="KMS key id, ARN or alias for aws:kms. Empty: S3's default key."
    )
    object_lock: ObjectLockConfig | None = Field(
        None,
        description="Write every image, its thumbnail and any retired copy with an S3 Object "
        "Lock until the retention rule's date (examination + years; a minor's until "
        "minors_until_age). The bucket must have been created with Object Lock (hence "
        "versioning), else a run is refused. Empty: no lock.",
    )

    @model_validator(mode="after")
    def _key_with_kms(self) -> S3Config:
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id needs server_side_encryption: aws:kms")
        return self

    def encryption(self) -> dict[str, str]:
        """The S3 request parameters of the configured encryption ({} for none)."""
        if self.server_side_encryption is None:
            return {}
        params = {"ServerSideEncryption": self.server_side_encryption}
        if self.kms_key_id:
            params["SSEKMSKeyId"] = self.kms_key_id
        return params

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value:
            raise ValueError(
                f"{value!r} is not a valid bucket name (3-63 lower-case letters, digits, "
                "dots and dashes)"
            )
        return value

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _endpoint(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if value is not None:
            _no_secret_in_http_url(str(value))
        if value is not None and not re.fullmatch(r"^https?://[^/\s]+/?$", str(value)):
            raise ValueError("must be an http:// or https:// URL with no path")
        return value

    @field_validator("key_template")
    @classmethod
    def _template(cls, value: str) -> str:
        if not value.startswith(KEY_PREFIX):
            raise ValueError(f"must start with {KEY_PREFIX!r}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"is not a valid template: {exc}") from None
        unknown = fields - KEY_PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(KEY_PLACEHOLDERS)}"
            )
        if "image_id" not in fields:
            raise ValueError("must contain {image_id}, or images would overwrite each other")
        if "clinic_id" not in fields:
            raise ValueError(
                "must contain {clinic_id}, or two clinics would overwrite each other's objects"
            )
        if value.count("{patient_guid}") != 1:
            raise ValueError("must contain {patient_guid} exactly once")
        for _, name, spec, conversion in string.Formatter().parse(value):
            if conversion:
                raise ValueError(f"{{{name}}}: no conversion (!{conversion}) is allowed")
            if spec:
                raise ValueError(f"{{{name}}}: no format spec (:{spec[:20]}) is allowed")
        segments = value.split("/")
        if ".." in value or "." in segments:
            raise ValueError("must not contain '..' or '.' segments")
        if any(not s for s in segments):
            raise ValueError("must not contain an empty segment ('//' or a trailing '/')")
        why = ambiguity(value)
        if why:
            raise ValueError(why)
        return value

    @field_validator("aws_credentials_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        return _block_name(value)


def _time_of_day(value: str) -> str:
    """``value`` as HH:MM (``6:30`` -> ``06:30``), or a ValueError naming it."""
    try:
        parsed = datetime.strptime(value, "%H:%M")
    except ValueError:
        raise ValueError(f"{value!r} is not a time of day as HH:MM") from None
    return parsed.strftime("%H:%M")


def _clock(value: str) -> time:
    """An HH:MM setting (checked by :func:`_time_of_day`) as a time of day."""
    return datetime.strptime(value, "%H:%M").time()


class BandwidthWindow(_Model):
    """From ``from`` to ``to`` (the clinic's time, HH:MM; past midnight allowed), uploads
    to S3 use at most ``max_upload_mbit``."""

    start: str = Field(alias="from", description="Start, HH:MM in the clinic's time zone.")
    end: str = Field(alias="to", description="End (excluded), HH:MM; before from: next day.")
    max_upload_mbit: float = Field(gt=0, le=100_000, description="Cap in this window, Mbit/s.")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        return _time_of_day(value)

    @model_validator(mode="after")
    def _not_empty(self) -> BandwidthWindow:
        if self.start == self.end:
            raise ValueError(f"the window from {self.start} to {self.end} is empty")
        return self

    def window(self) -> Window:
        return Window(_clock(self.start), _clock(self.end), self.max_upload_mbit)


class TransferConfig(_Model):
    """How hard to push: concurrency, batching, multipart sizes, retries, bandwidth."""

    batch_size: int = Field(
        500, ge=1, le=5000, description="Images per upload task (one Prefect task run each)."
    )
    parallel_batches: int = Field(2, ge=1, le=16, description="Upload tasks running at once.")
    upload_concurrency: int = Field(8, ge=1, le=64, description="Uploads at once in one task.")
    multipart_threshold_mb: int = Field(
        16, ge=5, le=5120, description="Files larger than this go up in multipart."
    )
    part_size_mb: int = Field(8, ge=5, le=5120, description="Multipart part size.")
    max_attempts: int = Field(5, ge=1, le=20, description="Tries per S3 request.")
    connect_timeout_seconds: float = Field(10, gt=0, le=300, description="S3 connect timeout.")
    read_timeout_seconds: float = Field(
        60, gt=0, le=3600, description="S3 read timeout (no answer for this long: retried)."
    )
    recheck_days: int = Field(
        7,
        ge=0,
        le=365,
        description="Days an upload S3 confirmed is trusted without asking S3 again: a re-run "
        "does not list a patient's S3 folder when all of its files are unchanged and were "
        "confirmed (by the upload, a sync's listing or verify) within this many days. 0: "
        "list every patient on every run.",
    )
    rehash_days: int = Field(
        30,
        ge=0,
        le=3650,
        description="The rolling content check: every run re-hashes the archived files "
        "hashed longest ago, a share of them such that each is re-hashed at least every "
        "this many days, and uploads again (keeping the old version in retired/) any whose "
        "bytes changed although their size and mtime did not. 0: off. Each night reads "
        "1/rehash_days of the archive from the share.",
    )
    max_upload_mbit: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Cap on the uploads to S3 (images, parts, thumbnails), Mbit/s, shared "
        "by every upload of the run; outside the bandwidth windows. Empty: no cap. Research "
        "exports and retrieval are not capped.",
    )
    bandwidth: tuple[BandwidthWindow, ...] = Field(
        (),
        description="A timetable of caps by time of day in the clinic's time zone, e.g. "
        "[{from: '07:00', to: '19:00', max_upload_mbit: 4}]; windows must not overlap. "
        "Outside them: max_upload_mbit.",
    )
    stop_at: str | None = Field(
        None,
        description="The end of the run's window, HH:MM in the clinic's time zone: past it a "
        "run starts no new upload, finishes the ones in flight, records what it did and ends "
        "Completed with what is left; the next run goes on from there. Empty: no end.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads that may do CPU work at once: hashing files, reading DICOM "
        "headers, drawing thumbnails (uploads waiting on the network do not count). Empty: "
        "the machine's cores minus one, at least one, so a core stays free for Sidexis.",
    )
    state_dir: str | None = Field(
        None,
        description="Folder for the resolver cache and the default catalog; default "
        "~/.local/state/pdata-sync "
        "(or PDATA_SYNC_STATE_DIR).",
    )

    @field_validator("stop_at")
    @classmethod
    def _stop_hhmm(cls, value: str | None) -> str | None:
        return None if value is None else _time_of_day(value)

    def deadline(self, start: datetime, timezone: str | None) -> datetime | None:
        """When a run that started at ``start`` must stop starting uploads (``stop_at``)."""
        if self.stop_at is None:
            return None
        return window_end(start, _clock(self.stop_at), timezone)

    @model_validator(mode="after")
    def _one_cap_at_a_time(self) -> TransferConfig:
        clash = overlapping([w.window() for w in self.bandwidth])
        if clash:
            a, b = (f"{w.start:%H:%M}-{w.end:%H:%M}" for w in clash)
            raise ValueError(f"transfer.bandwidth: the windows {a} and {b} overlap")
        return self

    def uploads(self, timezone: str | None) -> Bandwidth:
        """The uploads' bandwidth in the clinic's time zone."""
        return Bandwidth(self.max_upload_mbit, tuple(w.window() for w in self.bandwidth), timezone)

    def cpu_slots(self) -> int:
        """``cpu_threads``, or its default for this machine."""
        return self.cpu_threads or default_cpu_threads()

    def uncapped(self) -> TransferConfig:
        """These settings without a cap (research exports, retrieval)."""
        return self.model_copy(update={"max_upload_mbit": None, "bandwidth": ()})


class CatalogConfig(_Model):
    """The image catalog: what was uploaded and verified, when, by which flow run."""

    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the catalog database, without a password. Empty: an "
        "SQLite file catalog.sqlite in the state folder (transfer.state_dir). PostgreSQL: "
        "postgresql+psycopg://user@host/dbname.",
    )
    password_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the catalog database password. "
        "Without it, PDATA_SYNC_CATALOG_PASSWORD is used, if set.",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _empty_url(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("url")
    @classmethod
    def _catalog_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = _url_without_password(
            value, "catalog.password_secret_block", "PDATA_SYNC_CATALOG_PASSWORD"
        )
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("the catalog runs on SQLite or PostgreSQL")
        return value

    @field_validator("password_secret_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        return _block_name(value)


class OrthancConfig(_Model):
    """Orthanc (a PACS) as a second destination: every image verified in S3 is stored there
    too (docs/orthanc.md). Absent from a clinic's config: no Orthanc."""

    url: str = Field(
        description="Base URL of Orthanc's REST API, e.g. https://pacs.example.org:8042 (no "
        "user or password in it)."
    )
    username: str | None = Field(
        None,
        description="Orthanc user (RegisteredUsers). Empty: Orthanc without authentication.",
    )
    password_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the Orthanc password. Without it, "
        "the PDATA_SYNC_ORTHANC_PASSWORD environment variable is used.",
    )
    verify_tls: bool = Field(True, description="Check Orthanc's TLS certificate (https).")
    timeout_seconds: float = Field(
        60, gt=0, le=3600, description="Seconds to wait for one Orthanc answer (then retried)."
    )
    concurrency: int = Field(4, ge=1, le=32, description="Orthanc requests at once in one task.")
    max_attempts: int = Field(
        4, ge=1, le=20, description="Tries per Orthanc request (5xx, timeouts, resets)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _no_secret_in_http_url(value)
        if not re.fullmatch(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http:// or https:// URL (no query or fragment)")
        return value.rstrip("/")

    @field_validator("username", mode="before")
    @classmethod
    def _empty_user(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("password_secret_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        return _block_name(value)


class ResearchConfig(_Model):
    """Where de-identified research exports go (docs/research-export.md): a bucket that may
    belong to another account, and the key material of the pseudonyms."""

    bucket: str = Field(description="Bucket of the exports (research/{project}/...).")
    region: str = Field("eu-central-1", description="AWS region of the bucket.")
    endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible server; empty for AWS S3."
    )
    aws_credentials_block: str | None = Field(
        None,
        description="Name of a Prefect AwsCredentials block for the export bucket. Without "
        "it, the standard AWS chain is used.",
    )
    server_side_encryption: Encryption | None = Field(
        None,
        description="Encryption at rest asked of S3 for every export object: AES256 or "
        "aws:kms (as s3.server_side_encryption). Empty: the export bucket's default.",
    )
    kms_key_id: str | None = Field(None, description="KMS key for aws:kms.")
    secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the key of the pseudonyms and "
        "UIDs (combined with the project, so projects differ). Without it, the "
        "PDATA_SYNC_RESEARCH_SECRET environment variable is used.",
    )

    @model_validator(mode="after")
    def _bucket_like_s3(self) -> ResearchConfig:
        self.as_s3()  # the same rules as the archive's bucket and endpoint
        return self

    @field_validator("secret_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        return _block_name(value)

    def as_s3(self) -> S3Config:
        """The export bucket as an S3 destination (for the client)."""
        return S3Config(
            bucket=self.bucket,
            region=self.region,
            endpoint_url=self.endpoint_url,
            aws_credentials_block=self.aws_credentials_block,
            server_side_encryption=self.server_side_encryption,
            kms_key_id=self.kms_key_id,
        )


class ClinicConfig(_Model):
    """Everything one clinic's sync needs (docs/product-rules.md §6)."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (e.g. Europe/Berlin)") from None
        return value

    clinic_id: str = Field(description="Unique id of the clinic; part of every object key.")
    pdata_root: str = Field(description="Path of the Sidexis PDATA share as the worker sees it.")
    timezone: str | None = Field(
        None,
        description="The clinic's time zone (IANA, e.g. Europe/Berlin) for its bandwidth "
        "windows and stop_at. Empty: the time zone its deployment's schedule names, else the "
        "worker's local time.",
    )
    database: DatabaseConfig
    resolver: ResolverConfig
    s3: S3Config
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    orthanc: OrthancConfig | None = Field(
        None,
        description="Orthanc as a second destination (url, username, password block). "
        "Empty: images go to S3 only.",
    )
    research: ResearchConfig | None = Field(
        None,
        description="Where de-identified research exports go (bucket, key material). "
        "Empty: no research export.",
    )
    thumbnails: bool = Field(
        True,
        description="Make a 256-pixel JPEG of every newly uploaded image under "
        "thumbnails/{patientGuid}/ (for viewers and previews). Images it cannot draw are "
        "reported, never failed.",
    )
    retire: Literal["move", "keep"] = Field(
        "move",
        description="Objects that no longer belong (patient remapped, image renamed, media "
        "row, patient or file deleted): 'move' them to retired/ after their replacement is "
        "verified, or 'keep' them and only report them.",
    )
    retire_max_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Safety limit: a run that would retire more than this share of the "
        "clinic's objects (or more than retire_max_count) retires nothing and fails. Media "
        "rows that vanish from the database count against the same limit, checked before "
        "any upload.",
    )
    retire_max_count: int = Field(
        500, ge=0, description="Safety limit: at most this many objects retired in one run."
    )
    retire_always_allowed: int = Field(
        25,
        ge=0,
        description="Safety limit for small clinics: a run may always retire this many "
        "objects, whatever retire_max_fraction allows (5 % of 35 images is 1); never more "
        "than retire_max_count.",
    )
    incremental: bool = Field(
        False,
        description="Nightly runs read only the folders of patients whose database rows or "
        "patientGuids changed since the last complete run (docs/adr/0010). Needs "
        "database.media_patient_column. Off: every run reads every folder.",
    )
    full_every_days: float = Field(
        7,
        gt=0,
        le=90,
        description="With incremental runs: a run reads every folder (a full reconcile) "
        "when the last full run is this many days old. Only a full run sees a file "
        "changed or added on the share without a database change.",
    )

    @field_validator("clinic_id")
    @classmethod
    def _clinic(cls, value: str) -> str:
        if not _CLINIC_ID.fullmatch(value) or ".." in value:
            raise ValueError(
                f"{value!r}: use 1-64 letters, digits, dots and dashes, starting with a letter "
                "or digit, never two dots in a row (it is part of every S3 key and must be "
                "read back from it: no underscores, slashes or spaces)"
            )
        return value

    @field_validator("pdata_root")
    @classmethod
    def _pdata(cls, value: str) -> str:
        if not str(value).strip():
            raise ValueError("must be the path of the PDATA folder")
        return str(value)

    @model_validator(mode="after")
    def _parts(self) -> ClinicConfig:
        if self.transfer.part_size_mb > self.transfer.multipart_threshold_mb:
            raise ValueError(
                "transfer.part_size_mb must not exceed transfer.multipart_threshold_mb"
            )
        return self


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One readable line per problem: ``source: field.path: message``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required but missing"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known setting (check the spelling)"
        lines.append(f"{source}: {loc}: {msg}")
    return "; ".join(lines)


def parse_config(data: Any, source: str = "config") -> ClinicConfig:
    """Validate a mapping into a :class:`ClinicConfig`, raising :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return ClinicConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> ClinicConfig:
    """Read and validate a clinic's YAML file, raising :class:`ConfigError` naming the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, source=str(path))
