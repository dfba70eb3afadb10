"""Operator tools: plain functions returning data, for a queue directory or a server's URL.

scan (segment files as a reader finds them), dump and follow (records as
rows), owner (who holds the lock), replay (the state rebuilt read-only),
stats (the one stats model), dead (dead-lettered jobs), admin (enqueue,
requeue, purge, compact), repair (fsck and --repair). The CLI prints them.
"""
