"""Object stores through fsspec: ``s3://`` (s3fs) and any installed fsspec protocol; Glance's S3
URL forms."""
