"""fleetscore's settings: packaged defaults in ``fleetscore.yaml``, merged into ``dask.config``.

Precedence, as in dask-cloudprovider: keyword or flow parameter, then ``DASK_FLEETSCORE__...``
environment variables and user YAML, then the packaged defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

DEFAULTS = yaml.safe_load((Path(__file__).with_name("fleetscore.yaml")).read_text())
dask.config.update_defaults(DEFAULTS)


def setting(key: str, override: Any = None) -> Any:
    """The value of ``fleetscore.<key>``, unless ``override`` is given (not ``None``)."""
    if override is not None:
        return override
    return dask.config.get(f"fleetscore.{key}")


def snake(options: dict[str, Any]) -> dict[str, Any]:
    """YAML's ``kebab-case`` keys as Python keywords."""
    return {k.replace("-", "_"): v for k, v in options.items()}
