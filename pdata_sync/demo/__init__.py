"""Demo clinic: generator, resolver server, S3 server, end-to-end run."""
