"""A real local Ray head for tests and benchmarks: `ray start --head` on 127.0.0.1 with free ports, stopped after.

    with RayHead(num_cpus=4) as head:
        head.address          # http://127.0.0.1:P  (the dashboard: Ray Jobs, state API) -> DISTILLERY_RAY_ADDRESS
        head.env              # environment for clients: HOME with the head's token, RAY_AUTH_MODE=token
        head.gcs_address      # 127.0.0.1:P for ray.init(address=...)

Every port Ray would otherwise take from its defaults (dashboard agent 52365, client server 10001, worker ports
10002-19999) is chosen free here, so several heads on one machine do not collide. The head gets its own HOME, so
the token it writes (token authentication stays on, as in Ray 2.60's default) lands in HOME/.ray/auth_token and
never in the developer's home; clients read it with RAY_AUTH_MODE=token. `ray stop` in that HOME ends it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["RayHead", "free_ports"]

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _free_range(width: int) -> tuple[int, int]:
    """A run of `width` consecutive free ports above 20000 (Ray's worker ports)."""
    for start in range(20000 + (os.getpid() * 37) % 20000, 60000, width):
        ok = True
        for port in range(start, start + width):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                ok = False
                break
            finally:
                s.close()
        if ok:
            return start, start + width - 1
    raise RuntimeError("no free port range for Ray workers")


class RayHead:
    def __init__(self, num_cpus: int = 4, env: dict[str, str] | None = None, start_timeout: float = 240.0,
                 num_gpus: int = 0, resources: dict[str, float] | None = None):
        """num_gpus/resources are logical (Ray schedules by them; no GPU is needed to declare them)."""
        self.num_cpus, self.extra_env, self.start_timeout = num_cpus, dict(env or {}), start_timeout
        self.num_gpus, self.resources = num_gpus, dict(resources or {})
        self.dir = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # short: Ray's unix sockets live under it
        self.home = self.dir / "home"
        self.home.mkdir()
        self.env: dict[str, str] = {}
        self.address = self.gcs_address = ""
        self.gcs_port = 0

    def __enter__(self) -> "RayHead":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, tries: int = 3) -> None:
        for attempt in range(tries):  # a free port can be taken by someone else before Ray binds it: try again
            try:
                return self._start()
            except RuntimeError:
                self.stop_processes()
                if attempt == tries - 1:
                    raise

    def _start(self) -> None:
        gcs, dash, client, agent_http, agent_grpc, metrics, node, objm, rtenv = free_ports(9)
        lo, hi = _free_range(200)
        self.gcs_port = gcs
        self.env = {**os.environ, **self.extra_env, "HOME": str(self.home), "RAY_AUTH_MODE": "token",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
                    "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for var in ("RAY_ADDRESS", "DISTILLERY_RAY_ADDRESS", "DISTILLERY_RUNS_DIR", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(var, None)
        self.env["DISTILLERY_HOME"] = str(self.dir / "cluster-home")  # the cluster's own; it never sees the box's
        cmd = ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
               "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
               "--node-manager-port", str(node), "--object-manager-port", str(objm),
               "--runtime-env-agent-port", str(rtenv), "--min-worker-port", str(lo), "--max-worker-port", str(hi),
               "--num-cpus", str(self.num_cpus), "--num-gpus", str(self.num_gpus), "--disable-usage-stats",
               "--resources", json.dumps(self.resources),
               "--temp-dir", str(self.dir / "t")]
        start_env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_MODE"}
        token = self.home / ".ray" / "auth_token"
        if not token.is_file():  # `ray start` turns token auth on only when a token exists: make one, as the docs say
            subprocess.run(["ray", "get-auth-token", "--generate"], env=start_env, cwd=self.dir, capture_output=True,
                           timeout=120, check=True)
        proc = subprocess.run(cmd, env=self.env, cwd=self.dir, capture_output=True, text=True, timeout=self.start_timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        self.address, self.gcs_address = f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}"
        self._wait_until_alive()

    def _wait_until_alive(self) -> None:
        """The Jobs API answers and the raylet is still up (it dies when an agent cannot bind its port)."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=5):
                    break
            except urllib.error.HTTPError:  # 401 without the token: it is up
                break
            except Exception:  # not listening yet
                time.sleep(0.5)
        else:
            raise RuntimeError(f"the Ray dashboard at {self.address} did not come up")
        time.sleep(2)
        if not any(b"raylet/raylet" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in self.pids()
                   if Path(f"/proc/{pid}/cmdline").exists()):
            raise RuntimeError("the raylet of the test head exited right after starting (a port was taken)")

    def stop_processes(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.2)

    @property
    def token(self) -> str:
        return (self.home / ".ray" / "auth_token").read_text().strip()

    def pids(self) -> list[int]:
        """This head's processes: those naming its folder or its GCS port, and their descendants (never others')."""
        marks = [str(self.dir).encode()] + ([f":{self.gcs_port}".encode()] if self.gcs_port else [])
        table: dict[int, tuple[int, bytes]] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes()
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            table[int(proc.name)] = (ppid, cmd)
        ours = {pid for pid, (_, cmd) in table.items() if any(m in cmd for m in marks) and pid != os.getpid()}
        grew = True
        while grew:
            more = {pid for pid, (ppid, _) in table.items() if ppid in ours and pid not in ours}
            grew = bool(more)
            ours |= more
        return sorted(ours)

    def stop(self) -> None:
        """Stop this head only (`ray stop` would stop every Ray process of the machine, other people's too)."""
        self.stop_processes()
        shutil.rmtree(self.dir, ignore_errors=True)
