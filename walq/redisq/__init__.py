"""The Redis backend (redis-py is the optional extra walq[redis])."""
