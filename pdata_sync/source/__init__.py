"""The clinic's side, read-only: the PDATA share, the Sidexis database, each file's own DICOM
header, and what changed since the last run."""
