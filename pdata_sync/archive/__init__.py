"""S3, the archive of record: the client, listing, uploads and their confirmation, the
retire move, thumbnails and retrieval by patientGuid."""
