"""Prefect flows and deployments: wiring only; the work is in :mod:`scoring`, the cluster in :mod:`cluster`."""
