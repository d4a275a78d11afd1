"""Cluster-config files: one YAML per way of getting a Dask cluster, checked field by field.

A file names its ``type`` and holds that type's section, in the manner of
dask-jobqueue's ``jobqueue.yaml`` (see ``cluster-configs/`` for one
commented file per type)::

    type: slurm
    slurm:
      cores: 2
      memory: 4GiB
      jobs: 2

Types: ``local`` (LocalCluster), ``address`` (a running scheduler),
``tls`` (a running scheduler over TLS, with certificates), ``ssh``
(distributed.SSHCluster), ``slurm`` (dask-jobqueue's SLURMCluster) and
``kubernetes`` (the dask-kubernetes operator's KubeCluster).

Every problem (missing file, invalid YAML, unknown type, missing or unknown
field, wrong kind of value) is reported in one line naming the file and the
field. The functions that turn a section into the arguments of the cluster
classes are separate from the ones that start anything, so a config can be
checked (and its SLURM job script or Kubernetes manifest rendered) on a
machine that has no such cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from distributed.security import Security

from distkm import config

#: type -> {field: (required?, python type(s) or None for any)}
FIELDS = {
    "local": {"n-workers": (False, int), "threads-per-worker": (False, int), "memory-limit": (False, (str, int)),
              "dashboard-address": (False, str), "worker-environ": (False, dict),
              "worker-saturation": (False, (int, float, str))},
    "address": {"scheduler": (True, str), "timeout": (False, (str, int, float))},
    "tls": {"scheduler": (True, str), "ca-file": (True, str), "cert": (True, str), "key": (True, str),
            "timeout": (False, (str, int, float))},
    "ssh": {"hosts": (True, list), "connect-options": (False, dict), "workers-per-host": (False, int),
            "threads-per-worker": (False, int), "memory-limit": (False, (str, int)),
            "remote-python": (False, str), "scheduler-port": (False, int), "dashboard-address": (False, str),
            "worker-environ": (False, dict)},
    "slurm": {"cores": (True, int), "memory": (True, str), "jobs": (False, int), "processes": (False, int),
              "walltime": (False, str), "queue": (False, str), "account": (False, str), "python": (False, str),
              "interface": (False, str), "local-directory": (False, str), "log-directory": (False, str),
              "job-extra-directives": (False, list), "job-script-prologue": (False, list),
              "worker-environ": (False, dict), "death-timeout": (False, (str, int)),
              "wait-timeout": (False, (str, int, float)), "dashboard-address": (False, str),
              "worker-saturation": (False, (int, float, str))},
    "kubernetes": {"name": (True, str), "image": (False, str), "n-workers": (False, int),
                   "namespace": (False, str), "resources": (False, dict), "worker-environ": (False, dict),
                   "env-from-secret": (False, str), "service-account": (False, str),
                   "wait-timeout": (False, (str, int, float))},
}
EXAMPLES = {
    "scheduler": "scheduler: tcp://scheduler-host:8786",
    "hosts": "hosts: [node0, node1, node2] (the first runs the scheduler)",
    "cores": "cores: 2 (per SLURM job)",
    "memory": "memory: 4GiB (per SLURM job)",
    "ca-file": "ca-file: certs/ca.pem",
    "name": "name: distkm",
}


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
    if kind not in FIELDS:
        raise ValueError(f"cluster config {path}: unknown type {kind!r}; expected one of {', '.join(FIELDS)}")
    section = doc.get(kind) or {}
    if not isinstance(section, dict):
        raise ValueError(f"cluster config {path}: {kind} must be a mapping of settings")
    unknown = sorted(set(section) - set(FIELDS[kind]))
    if unknown:
        raise ValueError(f"cluster config {path}: unknown field {kind}.{unknown[0]} "
                         f"(fields of {kind}: {', '.join(FIELDS[kind])})")
    for name, (required, types) in FIELDS[kind].items():
        value = section.get(name)
        if value in (None, ""):
            if required:
                example = f" (e.g. {EXAMPLES[name]})" if name in EXAMPLES else ""
                raise ValueError(f"cluster config {path}: {kind}.{name} is required{example}")
            section.pop(name, None)
            continue
        if types is not None and (not isinstance(value, types) or isinstance(value, bool)):
            wanted = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ValueError(f"cluster config {path}: {kind}.{name} must be of type {wanted}, got {value!r}")
    if kind == "tls":
        _check_tls(path, section)
    if kind == "ssh" and len(section["hosts"]) < 2:
        raise ValueError(f"cluster config {path}: ssh.hosts needs at least two hosts: the scheduler's, then the "
                         "workers' (repeat a host to run both there)")
    return kind, section


def _check_tls(path, section):
    if not section["scheduler"].startswith("tls://"):
        raise ValueError(f"cluster config {path}: tls.scheduler must be a tls:// address, got {section['scheduler']!r}")
    for name in ("ca-file", "cert", "key"):
        file = _relative_to(path, section[name])
        if not file.is_file():
            raise ValueError(f"cluster config {path}: tls.{name} file {str(file)!r} not found")
        section[name] = str(file)


def _relative_to(config_path, name):
    """Paths in a config are relative to the config file, as in dask's own config."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else (Path(config_path).parent / p)


# --------------------------------------------------------------------------- #
# section -> arguments of the cluster classes (nothing is started here)
# --------------------------------------------------------------------------- #
def tls_security(section):
    """A :class:`distributed.security.Security` from a ``tls`` section: encryption required both ways."""
    return Security(tls_ca_file=section["ca-file"], tls_client_cert=section["cert"], tls_client_key=section["key"],
                    require_encryption=True)


def _environ(section):
    return {**config.section("local-cluster").get("worker-environ", {}), **section.get("worker-environ", {})}


def slurm_cluster_kwargs(section):
    """Arguments of ``dask_jobqueue.SLURMCluster`` for a ``slurm`` section.

    The workers' environment (``worker-environ``, by default distkm's
    allocator settings) becomes ``export`` lines of the job script.
    """
    prologue = [f"export {name}={value}" for name, value in _environ(section).items()]
    kwargs = {
        "cores": section["cores"],
        "memory": section["memory"],
        "processes": section.get("processes", 1),
        # The workers run this python: without it they would use whatever `python3` the job finds,
        # which may lack distributed (a venv is not activated inside a SLURM job).
        "python": section.get("python", sys.executable),
        "job_script_prologue": prologue + list(section.get("job-script-prologue", [])),
        "scheduler_options": {"dashboard_address": section.get("dashboard-address", "127.0.0.1:8787")},
    }
    for name, arg in (("walltime", "walltime"), ("queue", "queue"), ("account", "account"),
                      ("interface", "interface"), ("local-directory", "local_directory"),
                      ("log-directory", "log_directory"), ("job-extra-directives", "job_extra_directives"),
                      ("death-timeout", "death_timeout")):
        if name in section:
            kwargs[arg] = section[name]
    return kwargs


def ssh_cluster_kwargs(section):
    """Arguments of ``distributed.SSHCluster`` for an ``ssh`` section (first host: the scheduler)."""
    hosts = [str(h) for h in section["hosts"]]
    worker_options = {"n_workers": section.get("workers-per-host", 1),
                      "nthreads": section.get("threads-per-worker", 1),
                      "env": {k: str(v) for k, v in _environ(section).items()}}
    if "memory-limit" in section:
        worker_options["memory_limit"] = section["memory-limit"]
    kwargs = {
        "hosts": hosts,
        "connect_options": section.get("connect-options", {}),
        "worker_options": worker_options,
        "scheduler_options": {"port": section.get("scheduler-port", 8786),
                              "dashboard_address": section.get("dashboard-address", "127.0.0.1:8787")},
    }
    if "remote-python" in section:
        kwargs["remote_python"] = section["remote-python"]
    return kwargs


def kubernetes_cluster_spec(section):
    """The DaskCluster manifest (a dict) of the dask-kubernetes operator for a ``kubernetes`` section."""
    from dask_kubernetes.operator import make_cluster_spec

    env = {k: str(v) for k, v in _environ(section).items()}
    spec = make_cluster_spec(name=section["name"], image=section.get("image", "ghcr.io/dask/dask:latest"),
                             n_workers=section.get("n-workers", 2), resources=section.get("resources"), env=env)
    # Credentials of the object store reach the pods from Kubernetes, never from distkm's files: the keys of
    # a Secret as environment variables (AWS_ACCESS_KEY_ID...), or a service account that the cloud maps to
    # a role (EKS IRSA, GKE workload identity).
    for role in ("scheduler", "worker"):
        pod = spec["spec"][role]["spec"]
        if "service-account" in section:
            pod["serviceAccountName"] = section["service-account"]
        if "env-from-secret" in section:
            for container in pod["containers"]:
                container.setdefault("envFrom", []).append({"secretRef": {"name": section["env-from-secret"]}})
    return spec
