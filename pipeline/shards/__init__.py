"""Arrow shards, manifest and dataset card: the output contract."""
