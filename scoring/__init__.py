"""Per-device anomaly scoring: pure functions, plus the store they read and write.

Nothing in this package imports Prefect or starts a cluster, so every function
here can be called from a plain Python shell.
"""
