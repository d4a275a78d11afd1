"""Register distkm's defaults (``distkm.yaml``) with dask.config, and read them checked.

Done the way dask-jobqueue does it: the YAML beside this file holds every
default once, with comments; users override any of them through dask's own
configuration files, environment variables or ``dask.config.set``. Values
that the code relies on are read through the checked getters below, so a
bad setting fails at the door with a line naming the key, not deep inside a pass.
"""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path

import dask.config
import yaml

_DEFAULTS_FILE = Path(__file__).with_name("distkm.yaml")

with _DEFAULTS_FILE.open() as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)

#: Largest block for which float32 sums of uint8 values are exact (see distkm.kernels.lloyd).
_MAX_BLOCK_ROWS = 65536


def get(key, default=None):
    """Value of ``distkm.<key>`` from dask.config (``default`` when unset or null)."""
    value = dask.config.get(f"distkm.{key}", default=None)
    return default if value is None else value


def section(key):
    """The mapping ``distkm.<key>`` with its setting names in dask's spelling (hyphens).

    dask.config keeps a setting from an environment variable under the
    spelling it came with: ``DASK_DISTKM__LOCAL_CLUSTER__MEMORY_LIMIT`` lands
    as ``local_cluster: {memory_limit: ...}`` beside the defaults'
    ``local-cluster: {memory-limit: ...}``. dask.config.get finds either
    spelling of a full key; a whole mapping must be normalised like this, or
    the variable is silently ignored. Names of environment variables (keys
    in capitals, as under ``worker-environ``) are kept as they are.
    """
    return _hyphenated(get(key, {}))


def _hyphenated(mapping):
    out = {}
    for name, value in mapping.items():
        if isinstance(name, str) and name.islower():
            name = name.replace("_", "-")
        out[name] = _hyphenated(value) if isinstance(value, dict) else value
    return out


def get_int(key, *, minimum=1, maximum=None):
    """``distkm.<key>`` as an integer within bounds.

    Raises
    ------
    ValueError
        Naming the key, the value and the accepted range.
    """
    value = get(key)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # from an environment variable
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"dask config distkm.{key} must be an integer {bounds}, got {value!r}; "
                         "fix it in your dask config (e.g. ~/.config/dask/distkm.yaml) or its DASK_DISTKM__ variable")
    return int(value)


def get_fraction(key):
    """``distkm.<key>`` as a number in (0, 1]."""
    value = get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not isinstance(value, (Real, str)) or not 0 < number <= 1:
        raise ValueError(f"dask config distkm.{key} must be a number in (0, 1], got {value!r}")
    return number


def split_every():
    """Fan-in of the reduction tree (``distkm.split-every``)."""
    return get_int("split-every", minimum=2)


def block_rows():
    """Rows cast to the compute dtype at a time inside the kernels (``distkm.block-rows``)."""
    return get_int("block-rows", maximum=_MAX_BLOCK_ROWS)


def cache_fraction():
    """Share of the workers' memory that cached rows may take in ``cache="auto"`` (``distkm.cache-fraction``)."""
    return get_fraction("cache-fraction")


def get_list(key):
    """``distkm.<key>`` as a list of strings, or None when unset (null).

    One string counts as a list of one: an environment variable such as
    ``DASK_DISTKM__MIRRORS__MNIST=https://host/mnist/`` is not a Python literal.

    Raises
    ------
    ValueError
        Naming the key and the value.
    """
    value = get(key)
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, Path)) for v in value):
        raise ValueError(f"dask config distkm.{key} must be a list of strings, got {value!r}")
    return [str(v) for v in value]
