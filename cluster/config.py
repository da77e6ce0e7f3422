"""fleetscore's settings: packaged defaults in ``fleetscore.yaml``, merged into ``dask.config``.

Precedence, as in dask-cloudprovider: keyword or flow parameter, then ``DASK_FLEETSCORE__...``
environment variables and user YAML, then the packaged defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import distributed  # noqa: F401  (its defaults first: the ``distributed`` keys of fleetscore.yaml replace them)
import yaml

DEFAULTS = yaml.safe_load((Path(__file__).with_name("fleetscore.yaml")).read_text())
dask.config.update_defaults(DEFAULTS)


def setting(key: str, override: Any = None) -> Any:
    """The value of ``fleetscore.<key>``, unless ``override`` is given (not ``None``)."""
    if override is not None:
        return override
    return dask.config.get(f"fleetscore.{key}")


def worker_environ() -> dict[str, str]:
    """The environment a Nanny sets before starting its worker process, for containers whose Nanny reads no fleetscore.yaml."""
    return {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items() if v is not None}


def snake(options: dict[str, Any]) -> dict[str, Any]:
    """YAML's ``kebab-case`` keys as Python keywords."""
    return {k.replace("-", "_"): v for k, v in options.items()}
