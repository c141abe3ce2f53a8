"""locpick."""
