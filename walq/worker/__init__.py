"""The worker: a pool of processes running tasks, with heartbeats and policies."""
