"""Test support, kept out of production code.

faultfs: a simulated file system that crashes, tears writes and fails fsync.
plant: the storage bugs the torture tools plant, through the queue's seams.
"""
