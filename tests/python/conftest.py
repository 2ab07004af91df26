"""Starts one personal-clients server for the whole session, as an operator would.

The binary comes from $PC_BINARY (set by run.sh), falling back to target/release. Each session
gets a scratch directory with its own SQLite database and the server's log (stderr); every
failure message names that log, since the server's reason for a refusal goes only there.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("PC_BINARY", ROOT / "target" / "release" / "personal-clients"))
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 15.0


def _child_env():
    # Every flag has a PC_* twin. PC_DATABASE_URL in particular must not reach the child, and
    # none of the others should either: the tests rely on the defaults (public host
    # "localhost", admin role "admin", ...) whatever the developer's shell exports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PC_")}
    env["NO_COLOR"] = "1"  # plain text in the log file, not terminal colour codes
    return env


def _free_port():
    # Bind port 0, read what the kernel chose, release it for the server. Another process could
    # take it in between; that race is rare and shows as a clear start-up failure.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    address: str  # "127.0.0.1:PORT", for gRPC channels and http:// URLs alike
    database_url: str
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, lines=40):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as err:
            return f"(cannot read {self.log_path}: {err})"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self):
        """Appended to assertion messages: where the server's own account of things is."""
        return f"server log: {self.log_path}\n--- last lines ---\n{self.log_tail()}"

    def mint(self, user, roles):
        """A user access token, minted by the binary itself against the same database."""
        command = [str(BINARY), "mint-token", "--user", user, "--database-url", self.database_url]
        if roles:  # `--roles ""` would be one empty role name, which the binary refuses
            command += ["--roles", ",".join(roles)]
        result = subprocess.run(
            command,
            env=_child_env(), capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, (
            f"mint-token exited {result.returncode}: {result.stderr.strip()}\n{self.describe()}"
        )
        token = result.stdout.strip()
        assert token.count(".") == 2, f"mint-token printed no JWT: {result.stdout!r}"
        return token


def _wait_until_serving(server):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    host, port = server.address.rsplit(":", 1)
    last_error = "nothing tried yet"
    # First the port, then the gRPC health service: the listener may be bound a moment before
    # the health reporter has marked the services SERVING.
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode} while starting\n"
                        f"{server.describe()}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
        except OSError as err:
            last_error = f"connect: {err}"
            time.sleep(0.1)
            continue
        with grpc.insecure_channel(server.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = f"health status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            except grpc.RpcError as err:
                last_error = f"health check: {err.code()} {err.details()}"
        time.sleep(0.2)
    pytest.fail(f"server not SERVING within {STARTUP_TIMEOUT:.0f} s ({last_error})\n"
                f"{server.describe()}")


def serving(request, prefix, flags=lambda address: [], server_class=None):
    """Runs `serve` on a free port over a SQLite file of its own, with `flags(address)` besides,
    and yields it as a `server_class` (a Server) once it is SERVING; then stops it and checks that
    it ended cleanly. Its directory (database and log) is kept when a test failed meanwhile: the
    log named in the failure can still be opened."""
    server_class = server_class or Server
    assert BINARY.is_file(), f"{BINARY} is missing: run tests/python/run.sh, which builds it"
    # mkdtemp rather than TemporaryDirectory, so the directory outlives a failure.
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    database_url = f"sqlite://{tmp / 'pc.db'}?mode=rwc"
    address = f"127.0.0.1:{_free_port()}"
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(BINARY), "serve", "--listen", address, "--database-url", database_url,
             *flags(address)],
            env=_child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
    srv = server_class(address=address, database_url=database_url, log_path=log_path,
                       process=process)
    failed_before = request.session.testsfailed
    try:
        _wait_until_serving(srv)
        yield srv
    finally:
        code = process.poll()
        if code is not None:
            pytest.fail(f"server exited with {code} before the tests ended\n{srv.describe()}")
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"server still running {SHUTDOWN_TIMEOUT:.0f} s after SIGTERM\n"
                        f"{srv.describe()}")
        # The README promises exit 0 after SIGTERM (in-flight calls finished, usage flushed).
        assert code == 0, f"server exited {code} after SIGTERM\n{srv.describe()}"
    # Reached only when start-up and shutdown went well.
    if request.session.testsfailed == failed_before:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def server(request):
    # A short flush, so batched last_used_at values are written while the tests still run.
    yield from serving(request, "pc-python-", lambda address: ["--usage-flush-interval", "1s"])
