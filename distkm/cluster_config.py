"""Cluster-config files: one YAML per way of getting a Dask cluster, checked field by field.

A file names its ``type`` and holds that type's section, in the manner of
dask-jobqueue's ``jobqueue.yaml``::

    type: local
    local:
      n-workers: 2
      threads-per-worker: 1
      memory-limit: 4GiB

    type: address
    address:
      scheduler: tcp://10.0.0.5:8786
      timeout: 10s

Every problem (missing file, invalid YAML, unknown type, missing or unknown
field) is reported in one line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path

import yaml

#: type -> {field: required?}
FIELDS = {
    "local": {"n-workers": False, "threads-per-worker": False, "memory-limit": False, "dashboard-address": False,
              "worker-environ": False},
    "address": {"scheduler": True, "timeout": False},
}
#: Types planned but not yet supported, with what to use meanwhile.
PLANNED = ("ssh", "slurm", "kubernetes", "tls")
EXAMPLES = {"scheduler": "scheduler: tcp://10.0.0.5:8786"}


def load_cluster_config(path):
    """Read and check a cluster-config file.

    Returns
    -------
    type : str
    settings : dict
        The type's section.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cluster config {str(path)!r} not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"cluster config {path} is not valid YAML{line}: {getattr(e, 'problem', e)}") from e
    if not isinstance(doc, dict) or "type" not in doc:
        raise ValueError(f"cluster config {path} must be a mapping with a 'type' field (one of {', '.join(FIELDS)})")
    kind = doc["type"]
    if kind in PLANNED:
        raise ValueError(f"cluster config {path}: type {kind!r} is not supported yet (supported: "
                         f"{', '.join(FIELDS)}); start the cluster yourself and use type 'address'")
    if kind not in FIELDS:
        raise ValueError(f"cluster config {path}: unknown type {kind!r}; expected one of {', '.join(FIELDS)}")
    section = doc.get(kind) or {}
    if not isinstance(section, dict):
        raise ValueError(f"cluster config {path}: {kind} must be a mapping of settings")
    unknown = sorted(set(section) - set(FIELDS[kind]))
    if unknown:
        raise ValueError(f"cluster config {path}: unknown field {kind}.{unknown[0]} "
                         f"(fields of {kind}: {', '.join(FIELDS[kind])})")
    for name, required in FIELDS[kind].items():
        if required and section.get(name) in (None, ""):
            example = f" (e.g. {EXAMPLES[name]})" if name in EXAMPLES else ""
            raise ValueError(f"cluster config {path}: {kind}.{name} is required{example}")
    return kind, section
