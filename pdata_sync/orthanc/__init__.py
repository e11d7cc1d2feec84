"""Orthanc, the second destination: its REST client (every answer checked) and the store of
a batch verified in S3, recorded in the catalog. The archive never waits on it."""
