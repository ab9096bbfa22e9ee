"""Run orchestration pieces that flows wire together: lock, resumable store, steps."""
