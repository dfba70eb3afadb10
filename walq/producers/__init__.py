"""Producers: the client, its wire format, the spool, and the owner's server."""
