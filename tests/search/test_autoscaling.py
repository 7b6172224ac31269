"""Ray's autoscaler on a fake cluster (``cluster-fake.yaml``): GPU workers come up for pending trials and go
away when idle.

The head is started the way Ray's docs say for a fake cluster (``RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=cluster-fake.yaml``), so the file itself is what is tested: its head resources become
``--num-cpus``/``--num-gpus``, its worker node types are what the autoscaler launches. The ``fake_multinode``
provider starts each worker "node" as a local raylet (no docker, no SSH). A real search then runs on it,
submitted the way docs/cluster.md says for a fake cluster: ``mcel search SPEC --ray-address <head>`` as a
separate driver process.

Not ``ray up cluster-fake.yaml``: with the Ray 2.60 wheel it stops in ``prepare_config`` at the provider's
missing defaults file (``fake_multi_node/example.yaml``, not shipped), and the Docker variant of the provider
needs Docker. ``ray up`` on a head runs exactly the ``ray start --head --autoscaling-config`` used here.

Not ``ray.cluster_utils.AutoscalingCluster``: it reads ``fake_multi_node/example.yaml``, which the Ray wheel
does not ship, and it runs ``ray stop --force``, which kills every Ray process of this user on the machine
(other clusters included). Here the head runs in its own ``ray start --block`` process on free ports with a
private temp dir, and shutting down ends only the processes of this cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcel_search.search.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
FAKE_CLUSTER = ROOT / "cluster-fake.yaml"
SCALE_DOWN_S = 90  # bound on the wait for idle workers to go (idle_timeout_minutes is 0.15 there)
SEARCH_LIMIT_S = 300  # the search is interrupted (and the test fails) past this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpu_workers(nodes: list[dict]) -> set[str]:
    return {n["NodeID"] for n in nodes if n["Alive"] and n["Resources"].get("GPU", 0) > 0}


class FakeAutoscalingCluster:
    """``cluster-fake.yaml`` started as a local fake cluster: the head in a ``ray start --head --block``
    subprocess with the autoscaler (``RAY_FAKE_CLUSTER=1``), workers launched by it as local raylets."""

    def __init__(self, config_path: Path) -> None:
        self.config = yaml.safe_load(config_path.read_text())
        self.dir = Path(tempfile.mkdtemp(prefix="mcel-fake-"))  # short: Ray's socket paths must stay < 108
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def head_args(self) -> list[str]:
        res = dict(self.config["available_node_types"][self.config["head_node_type"]]["resources"])
        args = [f"--num-cpus={res.pop('CPU', 0)}", f"--num-gpus={res.pop('GPU', 0)}"]
        if "object_store_memory" in res:
            args.append(f"--object-store-memory={res.pop('object_store_memory')}")
        if res:
            args.append(f"--resources={json.dumps(res)}")
        return args

    def start(self, timeout: float = 90.0) -> None:
        import ray
        from ray._private.authentication.authentication_token_setup import (
            enable_token_auth_by_default,
            ensure_token_if_auth_enabled,
        )

        # The head, its workers and this driver must agree on token authentication (Ray >= 2.5x turns it on
        # for a new cluster, and a driver given an explicit address does not turn it on by itself): the mode
        # a local ray.init() would pick, exported to the head's environment, with its token (~/.ray).
        enable_token_auth_by_default()
        ensure_token_if_auth_enabled(None, create_token_if_missing=True)

        ip = ray.util.get_node_ip_address()
        port = _free_port()
        self.address = f"{ip}:{port}"
        config = dict(self.config, provider=dict(self.config["provider"], gcs_address=self.address))
        config_file = self.dir / "autoscaling.yaml"
        config_file.write_text(yaml.safe_dump(config))
        cmd = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={ip}",
            f"--port={port}",
            *self.head_args(),
            f"--autoscaling-config={config_file}",
            f"--temp-dir={self.dir / 'ray'}",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--disable-usage-stats",
        ]
        # MCEL_FAKE_GPUS: the workers' GPUs are labels without a device (search.trainable.FAKE_GPUS_ENV)
        env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", MCEL_FAKE_GPUS="1")
        self.log = self.dir / "head.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake cluster head did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def _processes(self) -> set:
        import psutil  # vendored by Ray: importable once ray is

        found = set()
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.dir) in arg for arg in p.info["cmdline"] or ()):
                    found.add(p)
            except psutil.Error:
                pass
        if self.proc is not None:
            with contextlib.suppress(psutil.Error):
                found.add(psutil.Process(self.proc.pid))
        for p in list(found):
            with contextlib.suppress(psutil.Error):
                found.update(p.children(recursive=True))
        return found

    def shutdown(self) -> None:
        """End this cluster's processes only: the head's (``ray start --block`` stops them on SIGTERM) and
        the worker raylets the autoscaler started (found by this cluster's temp dir, and as descendants)."""
        import psutil

        procs = self._processes()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Worker raylets outlive the head (they give up on its GCS only after a minute): end them now.
        alive = list(procs | self._processes())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
            _, alive = psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


class NodeWatch(threading.Thread):
    """Polls ``ray.nodes()``: the most GPU worker nodes alive at once, and every one seen."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.halt = threading.Event()
        self.max_alive = 0
        self.seen: set[str] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        import ray

        while not self.halt.is_set():
            try:
                alive = _gpu_workers(ray.nodes())
            except Exception as e:  # keep polling; reported if it never worked
                self.errors.append(repr(e))
            else:
                self.max_alive = max(self.max_alive, len(alive))
                self.seen |= alive
            self.halt.wait(self.interval)


def _trial_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no MLflow experiment {name!r}"
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mcel.role") == "trial"]


def test_fake_cluster_config_has_the_real_clusters_shape() -> None:
    cfg = yaml.safe_load(FAKE_CLUSTER.read_text())
    assert cfg["provider"]["type"] == "fake_multinode"
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0  # the head runs no trials
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers and all(w["min_workers"] == 0 and w["resources"]["GPU"] >= 1 for w in workers.values())
    assert {"max_workers", "idle_timeout_minutes", "upscaling_speed"} <= cfg.keys()


@pytest.mark.slow
def test_gpu_workers_scale_up_for_pending_trials_and_down_when_idle(
    tmp_path, mlflow_server, small_spec
) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    cfg = yaml.safe_load(FAKE_CLUSTER.read_text())
    max_workers = cfg["max_workers"]
    name = "autoscale"
    spec = small_spec(
        name,
        concurrency=4,
        resources={"cpu": 1, "gpu": 0.5},  # two trials per fake GPU worker: 4 trials want 2 workers
    )
    parse_spec(spec)  # valid before anything starts
    cluster = FakeAutoscalingCluster(FAKE_CLUSTER)
    watch = NodeWatch()
    try:
        t0 = time.monotonic()
        cluster.start()
        ray.init(address=cluster.address, include_dashboard=False, configure_logging=False)
        nodes = ray.nodes()
        heads = [n["NodeID"] for n in nodes if n["Alive"] and "node:__internal_head__" in n["Resources"]]
        assert len(heads) == 1 and len([n for n in nodes if n["Alive"]]) == 1, nodes
        assert not _gpu_workers(nodes), "GPU workers before any demand (min_workers is 0)"
        t_up = time.monotonic()

        watch.start()
        spec_file = tmp_path / f"{name}.yaml"
        spec_file.write_text(yaml.safe_dump(spec))
        mcel = [sys.executable, "-m", "mcel_search.search.cli", "search", str(spec_file)]
        try:
            search = subprocess.run(
                [*mcel, "--ray-address", cluster.address, "--quiet"],
                capture_output=True,
                text=True,
                timeout=SEARCH_LIMIT_S,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the search was still running after {SEARCH_LIMIT_S}s: {str(exc.stderr)[-2000:]}")
        assert search.returncode == 0, search.stderr[-3000:]
        t_search = time.monotonic()

        deadline = time.monotonic() + SCALE_DOWN_S
        while (left := _gpu_workers(ray.nodes())) and time.monotonic() < deadline:
            time.sleep(1)
        t_down = time.monotonic()
        watch.halt.set()
        watch.join(timeout=5)
        print(
            f"cluster up {t_up - t0:.1f}s, search {t_search - t_up:.1f}s, scale-down {t_down - t_search:.1f}s; "
            f"max GPU workers alive {watch.max_alive}, seen {len(watch.seen)}"
        )
    finally:
        watch.halt.set()
        ray.shutdown()
        cluster.shutdown()

    assert watch.max_alive >= 1, (
        f"the autoscaler launched no GPU worker for the pending trials {watch.errors}"
    )
    assert watch.max_alive <= max_workers, (
        f"{watch.max_alive} GPU workers alive, max_workers is {max_workers}"
    )
    assert not left, f"{len(left)} GPU workers still alive {SCALE_DOWN_S}s after the search (idle timeout)"
    runs = _trial_runs(MlflowClient(mlflow_server.uri), name)
    assert len(runs) == 4
    for r in runs:
        assert r.data.tags["mcel.state"] == "completed", r.data.tags
        node = r.data.tags["mcel.node_id"]
        assert node != heads[0], "a trial ran on the head (CPU 0)"
        assert node in watch.seen, f"trial ran on {node}, not on a GPU worker the autoscaler launched"
        assert r.data.tags["mcel.device"] == "cpu", r.data.tags  # what it trained on (fake GPUs: the CPU)
