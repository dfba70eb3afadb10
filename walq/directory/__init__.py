"""The directory backend: files, the log, the queue over it, its compactor."""
