"""Stand-ins for the kubelet on the envtest control plane (no container runtime here).

:class:`StatusKubelet` runs no container: it writes what a kubelet would report for the
pods of one namespace, so that the controllers (ReplicaSet, Deployment, Job) and the
operator see pods start, become ready and finish. Job pods succeed (or fail, or stay
pending, as the test says); other pods run and are ready.

:class:`ProcessKubelet` runs them for real: each pod's container as a local process in
a network namespace of its own (:class:`PodNetwork`), with its volumes, environment and
probes (root only).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_kind(pod: client.V1Pod) -> str:
    refs = pod.metadata.owner_references or []
    return refs[0].kind if refs else ""


class StatusKubelet:
    """Marks the pods of ``namespace``: ``jobs`` is "succeed", "fail" or "hold" (leave
    Job pods pending); ``hold_pods`` keeps the others pending too."""

    def __init__(self, api: client.ApiClient, namespace: str, *, jobs: str = "succeed",
                 interval: float = 0.3) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.jobs = jobs
        self.hold_pods = False
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{namespace}",
                                        daemon=True)

    def __enter__(self) -> StatusKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except ApiException:
                continue
            for pod in pods:
                if pod.metadata.deletion_timestamp or (pod.status.phase or "Pending") != "Pending":
                    continue
                with contextlib.suppress(ApiException):  # gone or changed: next round
                    self._mark(pod)

    def _mark(self, pod: client.V1Pod) -> None:
        now = _now()
        container = pod.spec.containers[0]
        if _owner_kind(pod) == "Job":
            if self.jobs == "hold":
                return
            code = 0 if self.jobs == "succeed" else 1
            status = {
                "phase": "Succeeded" if code == 0 else "Failed",
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "False",
                                "reason": "PodCompleted", "lastTransitionTime": now}],
                "containerStatuses": [{
                    "name": container.name, "image": container.image, "imageID": "",
                    "ready": False, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code,
                                             "reason": "Completed" if code == 0 else "Error",
                                             "startedAt": now, "finishedAt": now}}}]}
        else:
            if self.hold_pods:
                return
            status = {
                "phase": "Running", "startTime": now, "podIP": "10.244.0.10",
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                               for t in ("PodScheduled", "Initialized", "ContainersReady",
                                         "Ready")],
                "containerStatuses": [{
                    "name": c.name, "image": c.image, "imageID": "", "ready": True,
                    "started": True, "restartCount": 0,
                    "state": {"running": {"startedAt": now}}} for c in pod.spec.containers]}
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace,
                                              {"status": status})


# --- pods as processes ----------------------------------------------------------------------


class PodNetwork:
    """A Linux bridge with an address on the host and, per pod, a network namespace
    joined to it by a veth pair, with its own address (``ip netns`` + veth; root only).
    The host reaches every pod at its address and pods reach the host at ``gateway``."""

    def __init__(self, subnet: str = "10.244.77") -> None:
        suffix = f"{os.getpid() % 100000}"
        self.bridge = f"xrvbr{suffix}"[:15]
        self.prefix = f"xrv{suffix}"
        self.subnet = subnet
        self.gateway = f"{subnet}.1"
        self.cidr = f"{subnet}.0/24"
        self._next = 10
        self._lock = threading.Lock()
        self.namespaces: list[str] = []

    @staticmethod
    def reason() -> str:
        """Why pods cannot get network namespaces here; "" when they can."""
        if os.geteuid() != 0:
            return "pods as processes need root (ip netns, veth, mount namespaces)"
        if not shutil.which("ip") or not shutil.which("unshare"):
            return "pods as processes need iproute2 (ip) and util-linux (unshare)"
        return ""

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    @staticmethod
    def sweep() -> None:
        """Removes bridges, veths and namespaces left by runs whose process is gone (a
        killed test run), so that their addresses do not clash with this one's."""
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                               text=True).stdout
        spaces = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                text=True).stdout
        names = re.findall(r"^\d+: (xrv(?:br)?\d+[^:@\s]*)", links, re.M)
        names += re.findall(r"^(xrv\d+-\d+)", spaces, re.M)
        for name in names:
            pid = int(re.match(r"xrv(?:br)?(\d+)", name).group(1))
            if pid != os.getpid() % 100000 and not Path(f"/proc/{pid}").exists():
                kind = ["netns", "del"] if "-" in name else ["link", "del"]
                subprocess.run(["ip", *kind, name], capture_output=True)

    def __enter__(self) -> PodNetwork:
        self.sweep()
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for netns in list(self.namespaces):
            self.remove(netns)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def add(self) -> tuple[str, str]:
        """A new pod network namespace: (its name, its address)."""
        with self._lock:
            index = self._next
            self._next += 1
        if index > 250:
            raise RuntimeError("the test pod network has no address left")
        netns, address = f"{self.prefix}-{index}", f"{self.subnet}.{index}"
        host_end = f"{self.prefix}h{index}"[:15]
        self._ip("netns", "add", netns)
        self.namespaces.append(netns)
        self._ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._ip("link", "set", host_end, "master", self.bridge, "up")
        for args in (("addr", "add", f"{address}/24", "dev", "eth0"),
                     ("link", "set", "eth0", "up"), ("link", "set", "lo", "up"),
                     ("route", "add", "default", "via", self.gateway)):
            self._ip("-n", netns, *args)
        return netns, address

    def remove(self, netns: str) -> None:
        """Deletes a pod's namespace and its veth pair (the pair goes with the namespace
        only once nothing runs in it any more)."""
        index = netns.rpartition("-")[2]
        subprocess.run(["ip", "link", "del", f"{self.prefix}h{index}"[:15]],
                       capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        with contextlib.suppress(ValueError):
            self.namespaces.remove(netns)


# Runs inside the pod's network and mount namespaces (``ip netns exec`` makes the
# latter): binds each volume at its mount path, then execs the container's command. The
# sources are opened first and bound through /proc/self/fd, so a volume mounted over a
# parent of the others' folders (an emptyDir at /tmp, when the test runs under /tmp)
# hides none of them; the "image" (``keep``: the checkout and its virtual environment,
# which stand in for the container's own filesystem) is bound back where a volume hid it.
LAUNCHER = """
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
def bind(fd, dst):
    # --no-canonicalize: the kernel follows the descriptor, not the path it names
    subprocess.run(["mount", "--no-canonicalize", "--bind", f"/proc/self/fd/{fd}", dst],
                   check=True, pass_fds=(fd,))
fds = [os.open(src, os.O_PATH) for src, _ in spec["mounts"]]
keep = [(os.open(path, os.O_PATH), path) for path in spec["keep"]]
for fd, (_, dst) in zip(fds, spec["mounts"]):
    bind(fd, dst)
for fd, path in keep:  # the image: put back what a volume now hides
    here = os.stat(path) if os.path.isdir(path) else None
    there = os.stat(f"/proc/self/fd/{fd}")
    if here is None or (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        os.makedirs(path, exist_ok=True)
        bind(fd, path)
for fd in fds + [fd for fd, _ in keep]:
    os.close(fd)
os.chdir(spec["workdir"])
os.execvp(spec["argv"][0], spec["argv"])
"""


@dataclass
class RunningPod:
    uid: str
    namespace: str
    name: str
    netns: str
    address: str
    folder: Path
    argv: list[str]
    env: dict[str, str]
    mounts: list[tuple[str, str]]
    log: Path
    restart_policy: str
    probes: dict[str, dict]
    ports: dict[str, int]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    ready: bool = False
    started: bool = False
    done: str = ""  # "Succeeded" / "Failed" once a run-to-completion pod ends
    last_start: float = 0.0
    probe_due: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


class ProcessKubelet:
    """Runs the pods of ``namespaces`` as local processes, each in its own network
    namespace (:class:`PodNetwork`) and mount namespace, the way a kubelet would run
    their containers:

    - the container's ``command`` (looked up in the virtual environment first, then
      PATH) or else the image's entrypoint from ``images``, followed by its ``args``;
      a pod whose image has no entry waits with ``ErrImagePull`` and says why;
    - ``env`` and ``envFrom`` with ConfigMap and Secret references and the downward API
      resolved, plus ``KUBERNETES_SERVICE_HOST``/``PORT`` (the API server's address);
    - volumes as folders bind-mounted at their mount paths: emptyDir, PVCs (one folder
      per claim), Secrets, ConfigMaps and the projected ServiceAccount token (a bound
      token from the TokenRequest API, ``ca.crt``, ``namespace``);
    - httpGet startup, readiness and liveness probes, reported in the pod's status;
      restarts as the restart policy says; a Job pod's exit code as its phase;
    - a pod deleted from the API server has its process stopped (SIGTERM, then SIGKILL
      after its grace period).

    Not done: resource limits, security contexts (processes run as the test's user),
    image pulls, init containers, exec/tcp probes, more than one container per pod.
    """

    def __init__(self, api: Any, network: PodNetwork, folder: Path, *,
                 images: dict[str, list[str]], apiserver: tuple[str, int],
                 namespaces: list[str], bin_dirs: list[Path],
                 workdir: Path, keep: list[Path] = ()) -> None:
        self.core = client.CoreV1Api(api)
        self.network = network
        self.folder = folder
        self.images = images
        self.apiserver = apiserver
        self.namespaces = namespaces
        self.bin_dirs = bin_dirs
        self.workdir = workdir
        self.keep = list(keep)
        self.pods: dict[str, RunningPod] = {}
        self.refused: set[str] = set()
        self.made_dirs: list[Path] = []
        self._beat_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-kubelet",
                                        daemon=True)

    NODE = "envtest-kubelet"

    def __enter__(self) -> ProcessKubelet:
        self._register_node()
        self._thread.start()
        return self

    # -- the node ---------------------------------------------------------------------------

    def _register_node(self) -> None:
        """A Node for the pods (the EndpointSlice controller needs their node) with the
        heartbeats the node lifecycle controller expects (status and Lease)."""
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.NODE, "labels": {
                    "kubernetes.io/hostname": self.NODE, "kubernetes.io/os": "linux"}}}
        with contextlib.suppress(ApiException):
            self.core.create_node(node)
        self._heartbeat()

    def _heartbeat(self) -> None:
        now = _now()
        self.core.patch_node_status(self.NODE, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "process kubelet stand-in", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": self.network.gateway},
                          {"type": "Hostname", "address": self.NODE}],
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "110"}}})
        leases = client.CoordinationV1Api(self.core.api_client)
        lease = {"metadata": {"name": self.NODE, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.NODE, "leaseDurationSeconds": 40,
                          "renewTime": dt.datetime.now(dt.UTC).strftime(
                              "%Y-%m-%dT%H:%M:%S.%fZ")}}
        try:
            leases.patch_namespaced_lease(self.NODE, "kube-node-lease", lease)
        except ApiException as exc:
            if exc.status != 404:
                raise
            leases.create_namespaced_lease("kube-node-lease", lease)
        self._beat_at = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for pod in list(self.pods.values()):
            self._stop_pod(pod, grace=5)
        for path in reversed(self.made_dirs):
            with contextlib.suppress(OSError):
                path.rmdir()

    def logs(self, name_part: str = "") -> str:
        """The output of every pod whose name contains ``name_part``."""
        out = []
        for pod in self.pods.values():
            if name_part in pod.name and pod.log.exists():
                out.append(f"--- {pod.namespace}/{pod.name}\n"
                           f"{pod.log.read_text(errors='replace')[-6000:]}")
        return "\n".join(out)

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                if time.monotonic() - self._beat_at > 10:
                    self._heartbeat()
                self._sync()
            except Exception as exc:  # noqa: BLE001 - a kubelet keeps going
                print(f"process-kubelet: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _sync(self) -> None:
        seen: set[str] = set()
        for namespace in self.namespaces:
            try:
                pods = self.core.list_namespaced_pod(namespace).items
            except ApiException:
                continue
            for pod in pods:
                uid = pod.metadata.uid
                seen.add(uid)
                running = self.pods.get(uid)
                if pod.metadata.deletion_timestamp:
                    if running is not None:
                        self._stop_pod(running, pod.spec.termination_grace_period_seconds)
                    with contextlib.suppress(ApiException):
                        self.core.delete_namespaced_pod(
                            pod.metadata.name, namespace, grace_period_seconds=0)
                    continue
                if running is None and uid not in self.refused:
                    self._admit(pod)
                elif running is not None:
                    self._tend(running)
        for uid in [u for u in self.pods if u not in seen]:
            self._stop_pod(self.pods[uid], grace=10)

    # -- starting ---------------------------------------------------------------------------

    def _admit(self, pod: client.V1Pod) -> None:
        container = pod.spec.containers[0]
        meta = pod.metadata
        entry = self.images.get(container.image) or self.images.get("*")
        if not container.command and entry is None:
            self.refused.add(meta.uid)
            self._waiting(meta, container, "ErrImagePull",
                          f"no local stand-in for image {container.image}")
            return
        if not pod.spec.node_name:  # the scheduler's part
            self.core.create_namespaced_pod_binding(
                meta.name, meta.namespace, client.V1Binding(
                    metadata=client.V1ObjectMeta(name=meta.name),
                    target=client.V1ObjectReference(kind="Node", name=self.NODE)),
                _preload_content=False)
        folder = self.folder / f"{meta.namespace}_{meta.name}"
        folder.mkdir(parents=True, exist_ok=True)
        netns, address = self.network.add()
        try:
            mounts = self._volumes(pod, folder)
            env = self._env(pod, container, address)
        except ApiException as exc:  # a missing Secret/ConfigMap: the kubelet waits
            self.network.remove(netns)
            self._waiting(meta, container, "CreateContainerConfigError",
                          f"{exc.status} {exc.reason}")
            return
        argv = [self._which(c) for c in (container.command or [])] or list(entry or [])
        argv += list(container.args or [])
        ports = {p.name: p.container_port for p in container.ports or [] if p.name}
        probes = {}
        for kind in ("startup", "readiness", "liveness"):
            probe = getattr(container, f"{kind}_probe")
            if probe is not None and probe.http_get is not None:
                port = probe.http_get.port
                probes[kind] = {"path": probe.http_get.path or "/",
                                "port": ports.get(port, port) if isinstance(port, str)
                                else int(port),
                                "period": probe.period_seconds or 10,
                                "failures": probe.failure_threshold or 3,
                                "delay": probe.initial_delay_seconds or 0}
        running = RunningPod(
            uid=meta.uid, namespace=meta.namespace, name=meta.name, netns=netns,
            address=address, folder=folder, argv=argv, env=env, mounts=mounts,
            log=folder / "output.log", restart_policy=pod.spec.restart_policy or "Always",
            probes=probes, ports=ports)
        self.pods[meta.uid] = running
        self._launch(running)

    def _waiting(self, meta: Any, container: Any, reason: str, message: str) -> None:
        """Reports a pod that cannot start, and why (as ``kubectl describe`` shows it)."""
        self._patch(meta, {"phase": "Pending", "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "",
            "ready": False, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]})

    def _which(self, name: str) -> str:
        if "/" in name:
            return name
        for folder in self.bin_dirs:
            if (folder / name).exists():
                return str(folder / name)
        return shutil.which(name) or name

    def _mount_point(self, path: str) -> None:
        """Makes a missing mount point (recorded, removed again at the end)."""
        target = Path(path)
        missing = []
        while not target.exists():
            missing.append(target)
            target = target.parent
        for folder in reversed(missing):
            folder.mkdir()
            self.made_dirs.append(folder)

    def _volumes(self, pod: client.V1Pod, folder: Path) -> list[tuple[str, str]]:
        meta = pod.metadata
        sources: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            path = folder / "volumes" / volume.name
            claim = volume.persistent_volume_claim
            if claim is not None:  # one folder per claim, shared by its pods
                path = self.folder / "claims" / f"{meta.namespace}_{claim.claim_name}"
            path.mkdir(parents=True, exist_ok=True)
            if volume.secret is not None:
                secret = self.core.read_namespaced_secret(volume.secret.secret_name,
                                                          meta.namespace)
                for key, value in (secret.data or {}).items():
                    (path / key).write_bytes(base64.b64decode(value))
            if volume.config_map is not None:
                config = self.core.read_namespaced_config_map(volume.config_map.name,
                                                              meta.namespace)
                for key, value in (config.data or {}).items():
                    (path / key).write_text(value)
            if volume.projected is not None:
                self._projected(pod, volume.projected, path)
            sources[volume.name] = path
        mounts = []
        for mount in pod.spec.containers[0].volume_mounts or []:
            self._mount_point(mount.mount_path)
            mounts.append((str(sources[mount.name]), mount.mount_path))
        return mounts

    def _projected(self, pod: client.V1Pod, projected: Any, path: Path) -> None:
        meta = pod.metadata
        for source in projected.sources or []:
            if source.service_account_token is not None:
                request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                    audiences=[], expiration_seconds=source.service_account_token
                    .expiration_seconds or 3600,
                    bound_object_ref=client.V1BoundObjectReference(
                        kind="Pod", api_version="v1", name=meta.name, uid=meta.uid)))
                token = self.core.create_namespaced_service_account_token(
                    pod.spec.service_account_name or "default", meta.namespace, request)
                (path / source.service_account_token.path).write_text(token.status.token)
            if source.config_map is not None:
                config = self.core.read_namespaced_config_map(source.config_map.name,
                                                              meta.namespace)
                for item in source.config_map.items or []:
                    (path / item.path).write_text((config.data or {})[item.key])
            if source.downward_api is not None:
                for item in source.downward_api.items or []:
                    if item.field_ref and item.field_ref.field_path == "metadata.namespace":
                        (path / item.path).write_text(meta.namespace)

    def _env(self, pod: client.V1Pod, container: Any, address: str) -> dict[str, str]:
        namespace = pod.metadata.namespace
        env = {"PATH": os.pathsep.join([*map(str, self.bin_dirs), "/usr/bin", "/bin"]),
               "HOME": "/tmp", "LANG": "C.UTF-8",  # noqa: S108 - the pod's own /tmp
               "HOSTNAME": pod.metadata.name,
               "KUBERNETES_SERVICE_HOST": self.apiserver[0],
               "KUBERNETES_SERVICE_PORT": str(self.apiserver[1])}
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.config_map_ref is not None:
                data = self.core.read_namespaced_config_map(
                    source.config_map_ref.name, namespace).data or {}
            else:
                data = {k: base64.b64decode(v).decode() for k, v in (
                    self.core.read_namespaced_secret(source.secret_ref.name,
                                                     namespace).data or {}).items()}
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
            elif var.value_from.secret_key_ref is not None:
                ref = var.value_from.secret_key_ref
                data = self.core.read_namespaced_secret(ref.name, namespace).data or {}
                env[var.name] = base64.b64decode(data[ref.key]).decode()
            elif var.value_from.config_map_key_ref is not None:
                ref = var.value_from.config_map_key_ref
                env[var.name] = (self.core.read_namespaced_config_map(
                    ref.name, namespace).data or {})[ref.key]
            elif var.value_from.field_ref is not None:
                env[var.name] = {"metadata.namespace": namespace,
                                 "metadata.name": pod.metadata.name,
                                 "status.podIP": address}.get(
                    var.value_from.field_ref.field_path, "")
        return env

    def _launch(self, pod: RunningPod) -> None:
        argv = [shutil.which("ip") or "ip", "netns", "exec", pod.netns, sys.executable, "-c",
                LAUNCHER, json.dumps({"mounts": pod.mounts, "workdir": str(self.workdir),
                                      "keep": [str(p) for p in self.keep],
                                      "argv": pod.argv})]
        with pod.log.open("ab") as out:
            out.write(f"=== start {' '.join(pod.argv)}\n".encode())
            out.flush()
            pod.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                        env=pod.env, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        pod.last_start = time.monotonic()
        pod.ready = pod.started = False
        pod.failures.clear()
        pod.probe_due = {kind: pod.last_start + p["delay"] for kind, p in pod.probes.items()}
        self._report(pod)

    # -- running ----------------------------------------------------------------------------

    def _probe(self, pod: RunningPod, kind: str) -> bool:
        probe = pod.probes[kind]
        url = f"http://{pod.address}:{probe['port']}{probe['path']}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our pod
                return 200 <= resp.status < 400
        except (OSError, ValueError):
            return False

    def _tend(self, pod: RunningPod) -> None:
        if pod.done or pod.proc is None:
            return
        code = pod.proc.poll()
        if code is not None:
            with pod.log.open("ab") as out:
                out.write(f"=== exited {code}\n".encode())
            if pod.restart_policy == "Never" or (pod.restart_policy == "OnFailure"
                                                 and code == 0):
                pod.done = "Succeeded" if code == 0 else "Failed"
                self._report(pod, exit_code=code)
                return
            if time.monotonic() - pod.last_start < min(2 ** pod.restarts, 10):
                return  # back-off before the restart
            pod.restarts += 1
            self._launch(pod)
            return
        now = time.monotonic()
        changed = False
        for kind in ("startup", "readiness", "liveness"):
            if kind not in pod.probes or now < pod.probe_due.get(kind, 0):
                continue
            if kind != "startup" and "startup" in pod.probes and not pod.started:
                continue
            if kind == "startup" and pod.started:
                continue
            probe = pod.probes[kind]
            pod.probe_due[kind] = now + (1.0 if kind == "startup" else min(probe["period"], 2))
            ok = self._probe(pod, kind)
            pod.failures[kind] = 0 if ok else pod.failures.get(kind, 0) + 1
            if kind == "startup" and ok:
                pod.started = changed = True
            elif kind == "readiness" and ok != pod.ready:
                if ok or pod.failures[kind] >= probe["failures"]:
                    pod.ready, changed = ok, True
            elif kind == "liveness" and pod.failures[kind] >= probe["failures"]:
                self._stop_process(pod, grace=5)
                pod.restarts += 1
                self._launch(pod)
                return
        if "readiness" not in pod.probes and not pod.ready and (
                pod.started or "startup" not in pod.probes):
            pod.ready = changed = True
        if changed:
            self._report(pod)

    def _report(self, pod: RunningPod, exit_code: int | None = None) -> None:
        now = _now()
        if pod.done:
            phase = pod.done
            state = {"terminated": {"exitCode": exit_code or 0, "startedAt": now,
                                    "finishedAt": now,
                                    "reason": "Completed" if phase == "Succeeded" else "Error"}}
        else:
            phase, state = "Running", {"running": {"startedAt": now}}
        ready = "True" if pod.ready and not pod.done else "False"
        self._patch_pod(pod.namespace, pod.name, {
            "phase": phase, "podIP": pod.address, "podIPs": [{"ip": pod.address}],
            "hostIP": self.network.gateway, "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now}],
            "containerStatuses": [{
                "name": "main", "image": "", "imageID": "", "ready": ready == "True",
                "started": pod.started or "startup" not in pod.probes,
                "restartCount": pod.restarts, "state": state}]})

    def _patch(self, meta: Any, status: dict) -> None:
        self._patch_pod(meta.namespace, meta.name, status)

    def _patch_pod(self, namespace: str, name: str, status: dict) -> None:
        with contextlib.suppress(ApiException):
            live = self.core.read_namespaced_pod(name, namespace)
            for entry in status.get("containerStatuses") or []:
                entry["name"] = live.spec.containers[0].name
                entry["image"] = live.spec.containers[0].image
            self.core.patch_namespaced_pod_status(name, namespace, {"status": status})

    # -- stopping ---------------------------------------------------------------------------

    def _stop_process(self, pod: RunningPod, grace: float | None) -> None:
        proc = pod.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace if grace is not None else 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _stop_pod(self, pod: RunningPod, grace: float | None) -> None:
        self._stop_process(pod, grace)
        self.network.remove(pod.netns)
        self.pods.pop(pod.uid, None)
