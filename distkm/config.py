"""Register distkm's defaults (``distkm.yaml``) with dask.config.

Done the way dask-jobqueue does it: the YAML beside this file holds every
default once, with comments; users override any of them through dask's own
configuration files, environment variables or ``dask.config.set``.
"""

from __future__ import annotations

from pathlib import Path

import dask.config
import yaml

_DEFAULTS_FILE = Path(__file__).with_name("distkm.yaml")

with _DEFAULTS_FILE.open() as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


def get(key, default=None):
    """Value of ``distkm.<key>`` from dask.config (``default`` when unset or null)."""
    value = dask.config.get(f"distkm.{key}", default=None)
    return default if value is None else value
