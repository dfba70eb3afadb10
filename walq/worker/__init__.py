"""The worker: a pool of processes running tasks, with heartbeats and policies.

pool (the owner's dispatch loop: Worker), child (what runs in a worker process),
slots (a worker process as the owner sees it), admission (the tasks' policies as
the claim's gate), outcomes (recording results), status, heartbeat (leases), tasks.
"""
