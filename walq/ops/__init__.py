"""Operator tools: read, follow, count, repair and administer a queue."""
