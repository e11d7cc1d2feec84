"""De-identified research exports: PS3.15 Table E.1-1 applied to whole files, the IOD
types it depends on, and the export of a request's images under project pseudonyms."""
