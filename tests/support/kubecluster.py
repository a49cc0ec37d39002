"""A real Kubernetes control plane for tests, started as local processes the way
controller-runtime's ``envtest`` does it: etcd, kube-apiserver and (when the asset folder
has it) kube-controller-manager, on free loopback ports, with a PKI made here, RBAC on.

Assets: the folder named by ``KUBEBUILDER_ASSETS`` (the envtest convention) holds
``kube-apiserver`` and optionally ``kube-controller-manager`` and ``etcd``; an etcd not
there is taken from PATH (Debian's ``etcd-server``). ``make test`` sets the variable from
``../shared/envtest`` when it exists (see ``scripts/envtest-assets.sh``).

    python tests/support/kubecluster.py run -- CMD ...   # CMD with KUBECONFIG set

:func:`assets_reason` says why no control plane can start ("" when one can); the
``kube_cluster`` fixture (``tests/operator_pkg/conftest.py``) skips with that reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ASSETS_VAR = "KUBEBUILDER_ASSETS"
SERVICE_CIDR = "10.96.0.0/12"
START_TIMEOUT = 90.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def asset(name: str) -> Path | None:
    """An envtest binary from KUBEBUILDER_ASSETS, else (etcd only) from PATH; None when
    absent."""
    folder = os.environ.get(ASSETS_VAR)
    if folder and (Path(folder) / name).is_file():
        return Path(folder) / name
    if name == "etcd" and shutil.which("etcd"):
        return Path(shutil.which("etcd") or "")
    return None


def assets_reason() -> str:
    """Why no control plane can be started here; "" when one can."""
    if not os.environ.get(ASSETS_VAR):
        return (f"{ASSETS_VAR} is not set: no envtest assets (kube-apiserver) to run a real "
                "control plane; `make test` sets it from ../shared/envtest when present")
    if asset("kube-apiserver") is None:
        return f"{ASSETS_VAR}={os.environ[ASSETS_VAR]} has no kube-apiserver"
    if asset("etcd") is None:
        return "no etcd: install Debian's etcd-server or put etcd in " + ASSETS_VAR
    return ""


# --- PKI -------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name,
          issuer_key: rsa.RSAPrivateKey, *, ca: bool = False, server: bool = False,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = [x509.ExtendedKeyUsageOID.SERVER_AUTH] if server else \
            [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass
class Pki:
    """Files of the control plane's PKI in ``folder``."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)

    def make(self, extra_ips: tuple[str, ...] = ()) -> Pki:
        ca_key = _key()
        ca_name = _name("xrv-envtest-ca")
        ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
        self.ca_key, self.ca_name = ca_key, ca_name
        self._write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
        self._write("ca.key", _pem_key(ca_key))
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")), x509.DNSName("localhost"),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
            *(x509.DNSName(n) for n in ("kubernetes", "kubernetes.default",
                                        "kubernetes.default.svc",
                                        "kubernetes.default.svc.cluster.local"))]
        for stem, subject, server in (
                ("apiserver", _name("kube-apiserver"), True),
                ("admin", _name("kubernetes-admin", "system:masters"), False),
                ("controller-manager", _name("system:kube-controller-manager"), False)):
            key = _key()
            cert = _cert(subject, key, ca_name, ca_key, server=server,
                         sans=sans if server else None)
            self._write(f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM))
            self._write(f"{stem}.key", _pem_key(key))
        sa = _key()
        self._write("sa.key", _pem_key(sa))
        self._write("sa.pub", sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return self

    def issue_server(self, stem: str) -> tuple[str, str]:
        """(certificate, key) files of a serving certificate for 127.0.0.1 signed by the
        cluster's CA (a webhook the API server calls, say)."""
        key = _key()
        cert = _cert(_name(stem), key, self.ca_name, self.ca_key, server=True,
                     sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self._write(f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM))
        self._write(f"{stem}.key", _pem_key(key))
        return self[f"{stem}.crt"], self[f"{stem}.key"]

    def _write(self, name: str, data: bytes) -> None:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        self.files[name] = path

    def __getitem__(self, name: str) -> str:
        return str(self.files[name])


def kubeconfig_text(server: str, ca_file: str, *, cert: str = "", key: str = "",
                    token: str = "", namespace: str = "default") -> str:
    """A kubeconfig for ``server``: client certificate or bearer token."""
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    if token:
        user = f"    token: {token}\n"
    else:
        def b64(path: str) -> str:
            return base64.b64encode(Path(path).read_bytes()).decode()
        user = (f"    client-certificate-data: {b64(cert)}\n"
                f"    client-key-data: {b64(key)}\n")
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n"
            f"    server: {server}\n    certificate-authority-data: {ca}\n"
            f"contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: u\n"
            f"    namespace: {namespace}\ncurrent-context: envtest\n"
            f"users:\n- name: u\n  user:\n{user}")


# --- the control plane -----------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) in a temporary folder.

    ``start()`` returns once ``/readyz`` answers ok; ``stop()`` ends every process and
    removes the folder. ``kubeconfig`` is the admin's (system:masters)."""

    def __init__(self, *, controller_manager: bool = True,
                 bind_address: str = "127.0.0.1") -> None:
        """``bind_address``: where kube-apiserver listens (loopback; a test bridge's
        address when pods in network namespaces must reach it)."""
        self.tmp = Path(tempfile.mkdtemp(prefix="xrv-envtest-"))
        self.bind_address = bind_address
        self.pki = Pki(self.tmp / "pki")
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.port = free_port()
        self.server = f"https://{bind_address}:{self.port}"
        self.kubeconfig = self.tmp / "admin.kubeconfig"
        self.want_kcm = controller_manager and asset("kube-controller-manager") is not None

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL,
                                                start_new_session=True)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs.get(name)
        if not path or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> ControlPlane:
        (self.tmp / "pki").mkdir()
        self.pki.make(extra_ips=(self.bind_address,) if self.bind_address != "127.0.0.1"
                      else ())
        try:
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready()
            self.kubeconfig.write_text(kubeconfig_text(
                self.server, self.pki["ca.crt"], cert=self.pki["admin.crt"],
                key=self.pki["admin.key"]))
            if self.want_kcm:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(asset("etcd")), "--data-dir", str(self.tmp / "etcd"), "--name", "envtest",
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"envtest=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level", "warn"])

    def _start_apiserver(self) -> None:
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(asset("kube-apiserver")), f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.bind_address}",
            f"--advertise-address={self.bind_address}",
            f"--secure-port={self.port}", f"--cert-dir={self.tmp / 'certs'}",
            f"--tls-cert-file={pki['apiserver.crt']}",
            f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=RBAC",
            "--allow-privileged=true", "--endpoint-reconciler-type=none"])

    def _start_controller_manager(self) -> None:
        pki = self.pki
        kcm_config = self.tmp / "controller-manager.kubeconfig"
        kcm_config.write_text(kubeconfig_text(
            self.server, pki["ca.crt"], cert=pki["controller-manager.crt"],
            key=pki["controller-manager.key"]))
        self._spawn("kube-controller-manager", [
            str(asset("kube-controller-manager")), f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}",
            f"--authorization-kubeconfig={kcm_config}", "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--service-account-private-key-file={pki['sa.key']}",
            f"--root-ca-file={pki['ca.crt']}", f"--cluster-signing-cert-file={pki['ca.crt']}",
            f"--cluster-signing-key-file={pki['ca.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--leader-elect=false",
            "--use-service-account-credentials=true", "--controllers=*",
            "--concurrent-gc-syncs=5"])

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki["ca.crt"])
        ctx.load_cert_chain(self.pki["admin.crt"], self.pki["admin.key"])
        return ctx

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        ctx = self.ssl_context()
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n"
                                       f"{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx,  # noqa: S310
                                            timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready after {START_TIMEOUT:.0f} s ({last}):\n"
                           f"{self.log_tail('kube-apiserver')}")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Cluster:
    """A started control plane as tests use it: kubectl (1.32, tests/support/kubetools)
    as the admin or with another kubeconfig, the Python client, ServiceAccount
    kubeconfigs."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.kubeconfig = plane.kubeconfig
        self.cache = plane.tmp / "kubectl-cache"

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                kubeconfig: Path | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs kubectl; with ``check`` a non-zero exit fails with its stderr."""
        from support.kubetools import kubectl

        result = subprocess.run(
            [str(kubectl()), f"--kubeconfig={kubeconfig or self.kubeconfig}",
             f"--cache-dir={self.cache}", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stderr}")
        return result

    def api(self, kubeconfig: Path | None = None):
        from kubernetes import config

        return config.new_client_from_config(str(kubeconfig or self.kubeconfig))

    def token_kubeconfig(self, account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig with a fresh token of that ServiceAccount (as the kubelet mounts
        it in the account's pods)."""
        token = self.kubectl("create", "token", account, "-n", namespace,
                             "--duration=4h").stdout.strip()
        path.write_text(kubeconfig_text(self.plane.server, self.plane.pki["ca.crt"],
                                        token=token, namespace=namespace))
        return path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "run" or "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1:]
    reason = assets_reason()
    if reason:
        print(f"kubecluster: {reason}", file=sys.stderr)
        return 2
    plane = ControlPlane().start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(f"kubecluster: {plane.server}, KUBECONFIG={plane.kubeconfig}", file=sys.stderr)
        return subprocess.call(command, env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)})
    finally:
        plane.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
