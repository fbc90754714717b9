"""Writing to disk safely: atomic writes and appends, and storage faults (full disk, refused writes)."""
