"""Our own rules for the Ray cluster launcher configs (``cluster.yaml`` for AWS, ``cluster-gcp.yaml`` for GCP).

A tool for operators, run before ``ray up`` (``python -m mcel_search.cluster cluster.yaml``); nothing in a
running search imports it.

:func:`check_cluster_file` first runs Ray's own validation, ``validate_config(prepare_config(cfg))`` (the
schema and the provider's defaults, offline: ``prepare_config`` merges the ``defaults.yaml`` shipped inside Ray
and calls no cloud API), reported as ``[ray-schema]``. Then these rules check what makes a config right
*for this project*, offline, without a cloud:

* the head node runs no trials (``resources: {"CPU": 0}`` or ``ray start --head --num-cpus=0``) and has no
  GPU, so Tune places every trial on a GPU worker;
* every worker node type declares ``CPU`` and ``GPU`` > 0 explicitly, no more than its machine has (for the
  machine types we know), and GCP GPU machines say ``onHostMaintenance: TERMINATE`` in a ``scheduling``
  *mapping* (a list, as in some of Ray's own examples, is rejected by the Compute API);
* workers can write the shared storage (AWS: an ``IamInstanceProfile``; GCP: ``serviceAccounts`` with a
  storage scope), AWS nodes name an ``ImageId`` (Ray's fallback AMI is Ubuntu 18.04, whose Python is too
  old for this project);
* every node installs with the lock file (``-c <synced dir>/requirements.lock``, ``[setup-lock]``);
* the working directory is synced (``file_mounts`` with local ``.``; ``rsync_exclude`` keeps ``.venv``,
  ``.git``, ``mlflow.db``, ``mlruns`` and ``ray_results`` out) and every node installs it with ``pip install``
  into a virtualenv whose ``ray`` the start commands use; ``MCEL_DATA_ROOT`` is set to a local path;
* the MLflow server starts on the head only and binds to the head's private address (never all interfaces, a
  public IP or loopback); the Ray dashboard binds to ``127.0.0.1``; no security-group rule opens a port other
  than SSH to the world;
* buckets are the placeholder ``YOUR-BUCKET``; no credentials (access keys, private keys, passwords in URLs);
* permissions (``[iam-head]``, ``[iam-passrole]``, ``[iam-files]``): on AWS the head names its own instance
  profile (Ray's default ``ray-autoscaler-v1`` has no ``iam:PassRole``, so AWS refuses to launch workers
  that carry a profile) and the head policy shipped in ``cluster-setup/`` allows ``iam:PassRole`` on every
  worker profile's role; the ``cluster-setup/`` files the config names exist;
* SSH only from the operator (``[ssh-open]``): AWS nodes name ``SecurityGroupIds`` (Ray's own group opens
  port 22 to every address), GCP nodes a ``networkInterfaces`` network (the default network's firewall lets
  SSH in from anywhere);
* Ray token authentication (``[auth-token]``): ``~/.ray/auth_token`` is in ``file_mounts`` and every
  ``ray start`` runs with ``RAY_AUTH_MODE=token``;
* GPUs really used (``[gpu-check]``, ``[gpu-driver]``): every GPU worker's setup runs ``python -m
  mcel_search.core.devices`` (fails the node when torch cannot use its GPU), and a driver installed by the
  setup commands is pinned to a version that runs torch's CUDA (>= :data:`MIN_NVIDIA_DRIVER`).

Every problem is one line that starts with a ``[code]`` naming the rule, e.g.
``[head-runs-trials] head node type 'head': ...``. :func:`check_cluster_file` checks a file (its comments
included, for credentials and buckets); :func:`check_trial_fit` checks that per-trial resources of a search
spec pack onto the worker node types without idle GPU shares.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .core.errors import BadInputError

#: Placeholders a user must replace: ``YOUR-BUCKET``, ``YOUR-AMI-ID``, ``YOUR-ACCOUNT-ID``, ``YOUR-PROJECT-ID``.
PLACEHOLDER_RE = re.compile(r"\bYOUR-[A-Z0-9]+(?:-[A-Z0-9]+)*")
#: The only bucket name a committed cluster config may hold.
BUCKET_PLACEHOLDER = "YOUR-BUCKET"
#: Entries ``rsync_exclude`` must hold (``**/x`` and ``x/`` forms count).
RSYNC_EXCLUDES: tuple[str, ...] = (".venv", ".git", "mlflow.db", "mlruns", "ray_results")
#: Addresses the Ray dashboard may bind to.
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
#: Shell fragments that yield a node's private address (``hostname -i`` is not one: on Ubuntu it gives
#: ``127.0.1.1`` from /etc/hosts).
PRIVATE_ADDRESS_SOURCES: tuple[str, ...] = (
    "hostname -I",
    "hostname --all-ip-addresses",
    "ip route get",
    "169.254.169.254/latest/meta-data/local-ipv4",
    "metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/ip",
)
#: GCP scopes that let a node write a bucket.
GCP_STORAGE_SCOPES: tuple[str, ...] = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_write",
    "https://www.googleapis.com/auth/devstorage.full_control",
)

#: What credentials look like in a file: (name, pattern).
CREDENTIAL_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS key setting", re.compile(r"aws_(?:access_key_id|secret_access_key|session_token)", re.I)),
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a service-account key", re.compile(r"[\"']?private_key(?:_id)?[\"']?\s*:")),
    ("GCP credentials", re.compile(r"\bgcp_credentials\s*:")),
    ("a password in a URL", re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@", re.I)),
)

#: AWS instance types we know: (vCPUs, GPUs).
AWS_INSTANCES: dict[str, tuple[int, int]] = {
    "m5.large": (2, 0),
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "m6i.large": (2, 0),
    "m6i.xlarge": (4, 0),
    "m6i.2xlarge": (8, 0),
    "m6i.4xlarge": (16, 0),
    "g4dn.xlarge": (4, 1),
    "g4dn.2xlarge": (8, 1),
    "g4dn.4xlarge": (16, 1),
    "g4dn.8xlarge": (32, 1),
    "g4dn.12xlarge": (48, 4),
    "g4dn.16xlarge": (64, 1),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.8xlarge": (32, 1),
    "g5.12xlarge": (48, 4),
    "g5.16xlarge": (64, 1),
    "g5.24xlarge": (96, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
    "g6.4xlarge": (16, 1),
    "g6.8xlarge": (32, 1),
    "g6.12xlarge": (48, 4),
    "g6.16xlarge": (64, 1),
    "g6.24xlarge": (96, 4),
    "g6.48xlarge": (192, 8),
    "p3.2xlarge": (8, 1),
    "p3.8xlarge": (32, 4),
    "p3.16xlarge": (64, 8),
}
#: GCP G2 machine types (NVIDIA L4 built in): vCPUs -> GPUs.
GCP_G2_GPUS: dict[int, int] = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}
_GCP_MACHINE_RE = re.compile(r"(?:.*/)?(?P<family>[a-z][a-z0-9]*)-(?P<kind>[a-z]+)-(?P<cpus>\d+)$")

_RAY_START_RE = re.compile(r"(?P<exe>[^\s;&|()]*\bray)\s+start\b(?P<args>[^;&|\n]*)")
_RAY_ANY_RE = re.compile(r"(?P<exe>[^\s;&|()]*\bray)\s+(?:start|stop)\b")
_MLFLOW_SERVER_RE = re.compile(r"(?P<exe>[^\s;&|()]*\bmlflow)\s+server\b")
_HOST_ARG_RE = re.compile(r"(?:--host|(?<!\S)-h)(?:=|\s+)(?P<value>\$\([^)]*\)|\$\{?\w+\}?|[^\s;&|]+)")
_VENV_RE = re.compile(r"-m\s+venv\s+(?:--\S+\s+)*(?P<dir>[^\s;&|]+)")
_PIP_INSTALL_RE = re.compile(
    r"(?P<exe>[^\s;&|()]*/bin/(?:pip3?|python3?\s+-m\s+pip))\s+install\b(?P<args>[^;&|\n]*)"
)
_RAY_PIN_RE = re.compile(r"\bray(?:\[[^\]]*\])?==(?P<version>[0-9][\w.]*)")
_BUCKET_RE = re.compile(r"\b(?:s3|s3a|gs|gcs)://(?P<bucket>[^/\s'\"]+)")


#: The lock file (``make lock``) every node installs with, as pip constraints.
LOCK_FILE = "requirements.lock"
#: The NVIDIA driver branch torch 2.14.1+cu130 (CUDA 13.0) needs at least.
MIN_NVIDIA_DRIVER = 580
#: The command a GPU worker's setup must run: fails the node when torch cannot use its GPU.
GPU_CHECK = "mcel_search.core.devices"
#: Where Ray's authentication token lives, on the operator's machine and on every node.
AUTH_TOKEN_PATH = "~/.ray/auth_token"
_SETUP_FILE_RE = re.compile(r"\bcluster-setup/[\w.-]+")
_DRIVER_INSTALL_RE = re.compile(r"ubuntu-drivers\s+(?:install|autoinstall)\b(?P<args>[^;&|\n]*)")
_DRIVER_PIN_RE = re.compile(r"nvidia:(?P<branch>\d+)")


class ClusterConfigError(BadInputError):
    """A cluster config file could not be read as a YAML mapping."""


# --------------------------------------------------------------------------------------------- helpers


#: The IPv4 "every interface" address (spelled out so that a grep for it finds only real binds).
ALL_INTERFACES = ".".join(["0"] * 4)


def load_cluster_config(path: str | Path) -> tuple[dict[str, Any], str]:
    """The parsed config and its text (comments included)."""
    text = Path(path).read_text(encoding="utf-8")
    cfg = yaml.safe_load(text)
    if not isinstance(cfg, dict):
        raise ClusterConfigError(f"{path}: not a YAML mapping")
    return cfg, text


def placeholders(text: str) -> set[str]:
    """Every ``YOUR-...`` placeholder in ``text``."""
    return set(PLACEHOLDER_RE.findall(text))


def _home(path: str) -> str:
    """``$HOME/x``, ``${HOME}/x`` and ``/home/<user>/x`` -> ``~/x``; trailing slashes dropped."""
    path = path.strip("'\"")
    path = re.sub(r"^(?:\$\{HOME\}|\$HOME|/home/[^/\s]+)(?=/|$)", "~", path)
    return path.rstrip("/") or path


def _commands(value: Any) -> list[str]:
    return [str(c) for c in value] if isinstance(value, list) else []


def head_type(cfg: Mapping[str, Any]) -> str | None:
    return cfg.get("head_node_type")


def node_types(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    types = cfg.get("available_node_types")
    return {str(k): v for k, v in types.items() if isinstance(v, dict)} if isinstance(types, dict) else {}


def worker_types(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    head = head_type(cfg)
    return {name: nt for name, nt in node_types(cfg).items() if name != head}


def setup_commands(cfg: Mapping[str, Any], node_type: str) -> list[str]:
    """The setup commands Ray runs on a node of ``node_type`` (a node type's own ``worker_setup_commands``
    replace the global ``setup_commands`` and ``worker_setup_commands``, as in Ray)."""
    common = _commands(cfg.get("setup_commands"))
    if node_type == head_type(cfg):
        return common + _commands(cfg.get("head_setup_commands"))
    own = node_types(cfg).get(node_type, {}).get("worker_setup_commands")
    if own is not None:
        return _commands(own)
    return common + _commands(cfg.get("worker_setup_commands"))


def start_commands(cfg: Mapping[str, Any], node_type: str) -> list[str]:
    key = "head_start_ray_commands" if node_type == head_type(cfg) else "worker_start_ray_commands"
    return _commands(cfg.get(key))


def all_commands(cfg: Mapping[str, Any]) -> list[str]:
    """Every shell command of the config (global and per node type)."""
    out: list[str] = []
    for key in (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        out += _commands(cfg.get(key))
    for nt in node_types(cfg).values():
        out += _commands(nt.get("initialization_commands")) + _commands(nt.get("worker_setup_commands"))
    return out


def _flag(args: str, name: str) -> str | None:
    match = re.search(rf"(?<!\S){re.escape(name)}(?:=|\s+)(?P<value>[^\s;&|]+)", args)
    return match.group("value").strip("'\"") if match else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def node_hardware(provider: str, node_config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(vCPUs, GPUs) of a node config for the machine types we know; ``None`` where unknown."""
    if provider == "aws":
        return AWS_INSTANCES.get(str(node_config.get("InstanceType")), (None, None))
    if provider == "gcp":
        match = _GCP_MACHINE_RE.match(str(node_config.get("machineType", "")))
        if not match:
            return None, None
        cpus = int(match["cpus"])
        attached = 0
        for acc in node_config.get("guestAccelerators") or []:
            if isinstance(acc, dict):
                attached += int(acc.get("acceleratorCount", 0) or 0)
        if match["family"] == "g2":
            return cpus, GCP_G2_GPUS.get(cpus, attached or None)
        if match["family"] in ("n1", "n2", "n2d", "e2", "c2", "c3", "n4"):
            return cpus, attached
        return cpus, None
    return None, None


# ------------------------------------------------------------------------------------------------ rules


def _check_head(cfg: Mapping[str, Any], problems: list[str]) -> None:
    head = head_type(cfg)
    types = node_types(cfg)
    if head not in types:
        problems.append(f"[head-runs-trials] head_node_type {head!r} is not one of available_node_types")
        return
    resources = types[head].get("resources") or {}
    starts = [m for c in start_commands(cfg, head) for m in _RAY_START_RE.finditer(c)]
    head_starts = [m for m in starts if re.search(r"(?<!\S)--head\b", m["args"])]
    num_cpus = {_flag(m["args"], "--num-cpus") for m in head_starts}
    cpu = _number(resources.get("CPU"))
    if cpu != 0 and "0" not in num_cpus:
        problems.append(
            f"[head-runs-trials] head node type {head!r}: resources.CPU is {resources.get('CPU')!r} and "
            "`ray start --head` lacks --num-cpus=0; Tune could place trials on the head"
        )
    gpu = _number(resources.get("GPU"))
    num_gpus = {_flag(m["args"], "--num-gpus") for m in head_starts} - {None, "0"}
    if (gpu or 0) > 0 or num_gpus:
        problems.append(
            f"[head-gpu] head node type {head!r} declares a GPU; GPU trials could land on the head"
        )
    if not head_starts:
        problems.append("[head-start] head_start_ray_commands have no `ray start --head`")
        return
    args = head_starts[0]["args"]
    dash = _flag(args, "--dashboard-host")
    if dash not in LOOPBACK_HOSTS:
        problems.append(
            f"[dashboard-bind] `ray start --head` must say --dashboard-host=127.0.0.1 (got {dash!r}); "
            "reach the dashboard through `ray dashboard` (an SSH tunnel)"
        )
    if _flag(args, "--autoscaling-config") is None:
        problems.append(
            "[autoscaler] `ray start --head` lacks --autoscaling-config=~/ray_bootstrap_config.yaml"
        )


def _check_workers(cfg: Mapping[str, Any], provider: str, problems: list[str]) -> None:
    workers = worker_types(cfg)
    if not workers:
        problems.append("[worker-gpu] no worker node types: trials need GPU workers")
    for name, nt in workers.items():
        resources = nt.get("resources") or {}
        gpu, cpu = _number(resources.get("GPU")), _number(resources.get("CPU"))
        if not gpu or gpu <= 0:
            problems.append(
                f"[worker-gpu] worker node type {name!r}: resources must declare GPU > 0 "
                f"(got {resources.get('GPU')!r}); the autoscaler plans GPU trials from it"
            )
        if not cpu or cpu <= 0:
            problems.append(
                f"[worker-cpu] worker node type {name!r}: resources must declare CPU > 0 (got {resources.get('CPU')!r})"
            )
        node_config = nt.get("node_config") or {}
        vcpus, gpus = node_hardware(provider, node_config)
        if vcpus is not None and cpu is not None and cpu > vcpus:
            problems.append(
                f"[worker-hardware] worker node type {name!r}: declares CPU {cpu:g} but the machine has {vcpus} vCPUs"
            )
        if gpus is not None and gpu is not None and gpu != gpus:
            problems.append(
                f"[worker-hardware] worker node type {name!r}: declares GPU {gpu:g} but the machine has {gpus}"
            )
        if provider == "gcp" and (gpu or 0) > 0:
            scheduling = node_config.get("scheduling")
            if not isinstance(scheduling, dict) or scheduling.get("onHostMaintenance") != "TERMINATE":
                problems.append(
                    f"[gpu-maintenance] worker node type {name!r}: GPU machines need "
                    "`scheduling: {onHostMaintenance: TERMINATE}` (a mapping, not a list)"
                )
        if provider == "aws" and not node_config.get("IamInstanceProfile"):
            problems.append(
                f"[storage-access] worker node type {name!r}: no IamInstanceProfile; trials upload "
                "checkpoints to S3 from the workers"
            )
        if provider == "gcp":
            scopes = [
                scope
                for account in node_config.get("serviceAccounts") or []
                if isinstance(account, dict)
                for scope in account.get("scopes") or []
            ]
            if not any(scope in GCP_STORAGE_SCOPES for scope in scopes):
                problems.append(
                    f"[storage-access] worker node type {name!r}: serviceAccounts lack a storage scope; "
                    "trials upload checkpoints to GCS from the workers"
                )
    if provider == "aws":
        for name, nt in node_types(cfg).items():
            image = str((nt.get("node_config") or {}).get("ImageId", "")).strip()
            if image.lower() in ("", "latest_dlami"):
                problems.append(
                    f"[image] node type {name!r}: set ImageId (Ray's fallback AMI is Ubuntu 18.04, "
                    "whose Python is too old for this project)"
                )


def _check_install(cfg: Mapping[str, Any], problems: list[str]) -> None:
    mounts = cfg.get("file_mounts") or {}
    synced = sorted(
        _home(str(remote)) for remote, local in mounts.items() if str(local).strip() in (".", "./")
    )
    if not synced:
        problems.append("[sync] file_mounts must sync the working directory (e.g. `~/mcel-search: .`)")
    excludes = {str(e).removeprefix("**/").rstrip("/") for e in cfg.get("rsync_exclude") or []}
    missing = [e for e in RSYNC_EXCLUDES if e not in excludes]
    if missing:
        problems.append(f"[sync] rsync_exclude lacks {', '.join(missing)}")
    for node in node_types(cfg):
        setup = setup_commands(cfg, node)
        venvs = {_home(m["dir"]) for c in setup for m in _VENV_RE.finditer(c)}
        installs = [
            (_home(m["exe"]), [_home(a) for a in m["args"].split()])
            for c in setup
            for m in _PIP_INSTALL_RE.finditer(c)
        ]
        project = [
            exe
            for exe, args in installs
            if any(mount in args for mount in synced) and any(exe.startswith(f"{v}/bin/") for v in venvs)
        ]
        if not project:
            problems.append(
                f"[setup-install] node type {node!r}: no `<venv>/bin/pip install [-e] <synced dir>` in its setup "
                f"commands (synced: {', '.join(synced) or 'none'}; venvs: {', '.join(sorted(venvs)) or 'none'})"
            )
        elif not any(
            any(f"{mount}/{LOCK_FILE}" in args for mount in synced)
            for exe, args in installs
            if any(mount in args for mount in synced)
        ):
            problems.append(
                f"[setup-lock] node type {node!r}: the project is installed without `-c <synced dir>/{LOCK_FILE}`; "
                "each node would resolve unpinned transitive versions on its own"
            )
        for command in start_commands(cfg, node):
            paths = {_home(p) for p in re.findall(r"PATH=([^:\s;]+)/bin:", command)}
            for match in _RAY_ANY_RE.finditer(command):
                exe = _home(match["exe"])
                ok = any(exe == f"{v}/bin/ray" for v in venvs) or (
                    exe == "ray" and any(p in venvs for p in paths)
                )
                if not ok:
                    problems.append(
                        f"[ray-from-venv] node type {node!r}: `{match['exe']} start/stop` is not the ray of a "
                        "virtualenv made in setup; use <venv>/bin/ray or put <venv>/bin first in PATH"
                    )
    data_roots = [m for c in all_commands(cfg) for m in re.findall(r"MCEL_DATA_ROOT=([^\s;&|]+)", c)]
    if not data_roots:
        problems.append("[data-root] no command sets MCEL_DATA_ROOT (a local data directory on every node)")
    for root in data_roots:
        if "://" in root:
            problems.append(f"[data-root] MCEL_DATA_ROOT={root} must be a local path on each node")


def _bind_problem(value: str, command: str) -> str | None:
    """Why ``--host value`` is not the node's private address, or None if it is."""
    if value.startswith("$("):
        if any(source in value for source in PRIVATE_ADDRESS_SOURCES):
            return None
        return f"{value!r} is not a known way to get the node's private address"
    if value.startswith("$"):
        var = value.strip("${}")
        assigned = re.search(rf"(?<![\w$]){re.escape(var)}=(?P<expr>\$\([^)]*\))", command)
        if assigned:
            return _bind_problem(assigned["expr"], command)
        return f"{value!r} is not assigned from the node's private address in the same command"
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return f"{value!r} is a name, not the node's private address"
    if address.is_unspecified:
        return f"{value} listens on every interface, public ones included"
    if address.is_loopback:
        return f"{value} is loopback: the cluster reaches MLflow at the head's private address"
    if not address.is_private:
        return f"{value} is a public address"
    return None


def _check_mlflow(cfg: Mapping[str, Any], problems: list[str]) -> None:
    head = head_type(cfg)
    head_cmds = setup_commands(cfg, head) + start_commands(cfg, head) if head else []
    servers = [(c, m) for c in head_cmds for m in _MLFLOW_SERVER_RE.finditer(c)]
    if not servers:
        problems.append("[mlflow-missing] no `mlflow server` started on the head (head_start_ray_commands)")
    for command, match in servers:
        host = _HOST_ARG_RE.search(command[match.end() :])
        if host is None:
            problems.append(
                "[mlflow-bind] `mlflow server` has no --host: bind it to the head's private address"
            )
            continue
        why = _bind_problem(host["value"], command)
        if why:
            problems.append(f"[mlflow-bind] `mlflow server --host`: {why}")
    for node in worker_types(cfg):
        if any(_MLFLOW_SERVER_RE.search(c) for c in setup_commands(cfg, node) + start_commands(cfg, node)):
            problems.append(
                f"[mlflow-on-worker] node type {node!r} starts an MLflow server; only the head runs one"
            )


def _check_network(cfg: Mapping[str, Any], problems: list[str]) -> None:
    provider = cfg.get("provider") or {}
    rules = (provider.get("security_group") or {}).get("IpPermissions") or []
    for rule in rules:
        if not isinstance(rule, dict):
            continue
        world = any(r.get("CidrIp") == f"{ALL_INTERFACES}/0" for r in rule.get("IpRanges") or []) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges") or []
        )
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if world and ports != (22, 22):
            problems.append(
                f"[open-ports] provider.security_group opens ports {ports[0]}-{ports[1]} to the world; "
                "use SSH tunnels for MLflow and the dashboard"
            )


def _check_text(text: str, problems: list[str]) -> None:
    for what, pattern in CREDENTIAL_PATTERNS:
        match = pattern.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"[credentials] line {line}: looks like {what}; keep credentials out of the file")
    for match in _BUCKET_RE.finditer(text):
        if match["bucket"] != BUCKET_PLACEHOLDER:
            line = text.count("\n", 0, match.start()) + 1
            problems.append(
                f"[bucket-placeholder] line {line}: bucket {match['bucket']!r}; committed configs use "
                f"{BUCKET_PLACEHOLDER} (docs/cluster.md tells users to change it)"
            )


def _check_autoscaling(cfg: Mapping[str, Any], problems: list[str]) -> None:
    for key in ("max_workers", "idle_timeout_minutes", "upscaling_speed"):
        if key not in cfg:
            problems.append(f"[autoscaling] {key} is not set (Ray's default would apply silently)")


def _check_iam(cfg: Mapping[str, Any], provider: str, problems: list[str]) -> None:
    if provider != "aws":
        return
    head = head_type(cfg)
    head_config = node_types(cfg).get(str(head), {}).get("node_config") or {}
    if not head_config.get("IamInstanceProfile"):
        problems.append(
            f"[iam-head] head node type {head!r}: no IamInstanceProfile; Ray's default head profile "
            "(ray-autoscaler-v1) has no iam:PassRole, so AWS refuses to launch the workers with their profile "
            "(cluster-setup/aws-setup.sh makes mcel-head)"
        )


def worker_profile_roles(cfg: Mapping[str, Any]) -> dict[str, str]:
    """AWS: worker node type -> the role name its instance profile ARN names (``.../instance-profile/X``
    -> ``X``: ``cluster-setup/aws-setup.sh`` gives every profile a role of the same name)."""
    out = {}
    for name, nt in worker_types(cfg).items():
        profile = (nt.get("node_config") or {}).get("IamInstanceProfile") or {}
        arn = str(profile.get("Arn", "")) if isinstance(profile, dict) else ""
        if "instance-profile/" in arn:
            out[name] = arn.rsplit("instance-profile/", 1)[1]
    return out


def _listed(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)] if value is not None else []


def passrole_problems(cfg: Mapping[str, Any], head_policy: Mapping[str, Any]) -> list[str]:
    """``[iam-passrole]`` for every worker profile whose role the head policy may not pass (an ``Allow``
    statement with ``iam:PassRole`` (or ``iam:*``, ``*``) on ``arn:aws:iam::<account>:role/<role>``, where a
    ``*`` in the policy's resource matches anything)."""
    allowed: list[re.Pattern[str]] = []
    for st in head_policy.get("Statement") or []:
        if not isinstance(st, dict) or st.get("Effect") != "Allow":
            continue
        if not set(_listed(st.get("Action"))) & {"iam:PassRole", "iam:*", "*"}:
            continue
        for resource in _listed(st.get("Resource")):
            allowed.append(re.compile(".*".join(map(re.escape, resource.split("*"))) + "$"))
    problems = []
    for node, role in worker_profile_roles(cfg).items():
        if not any(rx.match(f"arn:aws:iam::YOUR-ACCOUNT-ID:role/{role}") for rx in allowed):
            problems.append(
                f"[iam-passrole] worker node type {node!r}: the head policy allows no iam:PassRole on role "
                f"{role!r}; AWS would refuse to launch the worker with its instance profile"
            )
    return problems


def _check_ssh(cfg: Mapping[str, Any], provider: str, problems: list[str]) -> None:
    for name, nt in node_types(cfg).items():
        node_config = nt.get("node_config") or {}
        if provider == "aws" and not node_config.get("SecurityGroupIds"):
            problems.append(
                f"[ssh-open] node type {name!r}: no SecurityGroupIds; Ray's own security group opens SSH to "
                f"{ALL_INTERFACES}/0 (cluster-setup/aws-setup.sh makes one open to OPERATOR_CIDR only)"
            )
        if provider == "gcp" and not node_config.get("networkInterfaces"):
            problems.append(
                f"[ssh-open] node type {name!r}: no networkInterfaces; the default network's firewall lets SSH in "
                "from anywhere (cluster-setup/gcp-setup.sh makes mcel-net, SSH from OPERATOR_CIDR only)"
            )


def _check_auth(cfg: Mapping[str, Any], problems: list[str]) -> None:
    mounts = {_home(str(remote)) for remote in (cfg.get("file_mounts") or {})}
    if AUTH_TOKEN_PATH not in mounts:
        problems.append(
            f"[auth-token] file_mounts lacks {AUTH_TOKEN_PATH}: the nodes would have no Ray token "
            "(make it with `ray get-auth-token --generate`)"
        )
    for node in node_types(cfg):
        for command in start_commands(cfg, node):
            if _RAY_START_RE.search(command) and not re.search(r"\bRAY_AUTH_MODE=token\b", command):
                problems.append(
                    f"[auth-token] node type {node!r}: `ray start` without RAY_AUTH_MODE=token; anyone who "
                    "reaches the node's Ray ports could run code on the cluster"
                )


def _check_gpu(cfg: Mapping[str, Any], problems: list[str]) -> None:
    for name, nt in worker_types(cfg).items():
        if not (_number((nt.get("resources") or {}).get("GPU")) or 0) > 0:
            continue
        setup = setup_commands(cfg, name)
        if not any(re.search(rf"-m\s+{re.escape(GPU_CHECK)}\b", c) for c in setup):
            problems.append(
                f"[gpu-check] worker node type {name!r}: setup never runs `python -m {GPU_CHECK}`; a node whose "
                "torch cannot use the GPU would train trials on the CPU"
            )
        for command in setup:
            for match in _DRIVER_INSTALL_RE.finditer(command):
                pin = _DRIVER_PIN_RE.search(match["args"])
                if pin is None or int(pin["branch"]) < MIN_NVIDIA_DRIVER:
                    problems.append(
                        f"[gpu-driver] worker node type {name!r}: `ubuntu-drivers {match[0].split()[1]}` must name "
                        f"a driver branch >= {MIN_NVIDIA_DRIVER} (e.g. nvidia:{MIN_NVIDIA_DRIVER}-server): torch's "
                        f"CUDA 13 does not run on older drivers (got {match['args'].strip() or 'no version'!r})"
                    )


def ray_schema_problems(cfg: Mapping[str, Any]) -> list[str]:
    """``[ray-schema]``: what Ray's own ``validate_config(prepare_config(cfg))`` rejects (one line), offline."""
    import copy

    try:
        import jsonschema
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:
        return [f"[ray-schema] cannot run Ray's validation: {exc} (pip install 'ray[default]')"]
    quiet = logging.getLogger("ray.autoscaler")  # prepare_config logs an INFO line per node type
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(dict(cfg))))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
        return [f"[ray-schema] {where}: {exc.message}"]
    except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return [f"[ray-schema] {type(exc).__name__}: {first}"]
    finally:
        quiet.setLevel(level)
    return []


def check_cluster_config(
    cfg: Mapping[str, Any], text: str | None = None, *, ray_version: str | None = None
) -> list[str]:
    """Every way ``cfg`` breaks our rules (see the module docstring), one ``[code] ...`` line each.

    ``text`` is the file's text, so that comments are searched for credentials and buckets too (without
    it, the YAML dump of ``cfg`` is searched). With ``ray_version``, every ``ray==`` / ``ray[...]==`` pin in
    the commands must be that version (the laptop's, the cluster's and the project's Ray must match).
    """
    problems: list[str] = []
    provider = str((cfg.get("provider") or {}).get("type", ""))
    _check_autoscaling(cfg, problems)
    _check_head(cfg, problems)
    _check_workers(cfg, provider, problems)
    _check_install(cfg, problems)
    _check_mlflow(cfg, problems)
    _check_network(cfg, problems)
    _check_iam(cfg, provider, problems)
    _check_ssh(cfg, provider, problems)
    _check_auth(cfg, problems)
    _check_gpu(cfg, problems)
    _check_text(text if text is not None else yaml.safe_dump(dict(cfg)), problems)
    if ray_version is not None:
        for command in all_commands(cfg):
            for match in _RAY_PIN_RE.finditer(command):
                if match["version"] != ray_version:
                    problems.append(
                        f"[ray-version] commands pin ray=={match['version']}; the project pins {ray_version}"
                    )
    return list(dict.fromkeys(problems))  # each problem once, in order


def setup_file_problems(cfg: Mapping[str, Any], text: str, base: Path) -> list[str]:
    """``[iam-files]`` for every ``cluster-setup/...`` file the config names that does not exist under
    ``base``; on AWS, :func:`passrole_problems` against ``cluster-setup/aws-head-policy.json``."""
    import json

    problems = []
    for name in sorted(set(_SETUP_FILE_RE.findall(text))):
        if not (base / name).is_file():
            problems.append(f"[iam-files] {name} is named in the config but missing next to it")
    provider = str((cfg.get("provider") or {}).get("type", ""))
    policy = base / "cluster-setup" / "aws-head-policy.json"
    if provider == "aws":
        if not policy.is_file():
            problems.append(f"[iam-files] {policy.relative_to(base)} is missing: the head's permissions")
        else:
            try:
                head_policy = json.loads(policy.read_text(encoding="utf-8"))
            except ValueError as exc:
                return [*problems, f"[iam-files] {policy.relative_to(base)}: not JSON ({exc})"]
            problems += passrole_problems(cfg, head_policy)
    return problems


def check_cluster_file(
    path: str | Path, *, ray_version: str | None = None, ray_schema: bool = True
) -> list[str]:
    """Ray's validation (:func:`ray_schema_problems`, unless ``ray_schema=False``), :func:`check_cluster_config`
    on a file, comments included, and the ``cluster-setup/`` files next to it (:func:`setup_file_problems`)."""
    cfg, text = load_cluster_config(path)
    problems = ray_schema_problems(cfg) if ray_schema else []
    problems += check_cluster_config(cfg, text, ray_version=ray_version)
    problems += setup_file_problems(cfg, text, Path(path).resolve().parent)
    return list(dict.fromkeys(problems))


# ----------------------------------------------------------------------------------- trial placement


def trials_per_node(resources: Mapping[str, Any], cpu: float, gpu: float) -> int:
    """How many trials of ``{cpu, gpu}`` fit on a node with ``resources`` (Ray packs whole trials)."""
    fits = []
    for key, need in (("CPU", cpu), ("GPU", gpu)):
        if need > 0:
            have = _number(resources.get(key)) or 0.0
            fits.append(math.floor(have / need + 1e-9))
    return min(fits) if fits else 0


def check_trial_fit(cfg: Mapping[str, Any], cpu: float, gpu: float) -> list[str]:
    """Problems placing trials of ``{cpu, gpu}`` on the worker node types: a type that cannot hold one
    trial, or whose CPUs leave part of its GPUs idle."""
    problems: list[str] = []
    for name, nt in worker_types(cfg).items():
        resources = nt.get("resources") or {}
        n = trials_per_node(resources, cpu, gpu)
        if n == 0:
            problems.append(
                f"[trial-fit] worker node type {name!r} ({dict(resources)}) cannot hold one trial"
            )
            continue
        if gpu > 0:
            by_gpu = math.floor((_number(resources.get("GPU")) or 0.0) / gpu + 1e-9)
            if n < by_gpu:
                problems.append(
                    f"[trial-fit] worker node type {name!r}: its CPUs hold {n} trials of {cpu:g} CPU, "
                    f"its GPUs {by_gpu} of {gpu:g} GPU; part of the GPUs would stay idle"
                )
    return problems


def iter_problems(paths: Iterable[str | Path], *, ray_version: str | None = None) -> Iterable[str]:
    """``path: problem`` for every problem of every file (for a quick command-line check)."""
    for path in paths:
        for problem in check_cluster_file(path, ray_version=ray_version):
            yield f"{path}: {problem}"


if __name__ == "__main__":  # python -m mcel_search.cluster cluster.yaml cluster-gcp.yaml
    import sys

    found = list(iter_problems(sys.argv[1:] or ["cluster.yaml", "cluster-gcp.yaml"]))
    print("\n".join(found) or "no problems")
    sys.exit(1 if found else 0)
