"""Alembic environment of the image catalog: runs on the connection pdata-sync hands over
(``config.attributes["connection"]``); never configures logging, never reads an ini file."""

from __future__ import annotations

from alembic import context

from pdata_sync.catalog import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the catalog migrations run through pdata_sync.catalog.Catalog.migrate")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
