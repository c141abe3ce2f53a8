"""The verified atomic destination: a private temp or resumable part file beside DEST, hashed as
it is written, size and hash checked, renamed into place; the per-DEST lock; hashing.

May import: ``errors``, ``redact``. Never a partial or corrupt file at DEST.
"""
