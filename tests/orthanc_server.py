"""A throw-away Orthanc PACS for tests: loopback ports, temporary storage, DICOMweb plugin, AET checks on.

Orthanc has no bind-address option (its ports listen on every interface), so remote HTTP access stays off,
only the listed modalities may store, and it is stopped with SIGTERM when the test is done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def orthanc_binary() -> str | None:
    """The Orthanc executable, or None when the Debian package is not installed."""
    return shutil.which("Orthanc", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin library (Debian package orthanc-dicomweb), or None."""
    return next((p for d in PLUGIN_DIRS for p in sorted(d.glob("libOrthancDicomWeb.so*"))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """``with OrthancServer(folder, modalities={"PATLAK": "PATLAK"}) as pacs:`` a running Orthanc.

    Parameters
    ----------
    folder:
        Scratch folder for the configuration, storage and log.
    modalities:
        Name -> AE title of the modalities allowed to store from 127.0.0.1.
    aet:
        Orthanc's own AE title (the called AE title of a C-STORE).
    """

    def __init__(self, folder: Path, modalities: dict[str, str], aet: str = "ORTHANC", start_timeout_s: float = 20.0):
        self.folder, self.modalities, self.aet = Path(folder), dict(modalities), aet
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.http_port = self.dicom_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> dict:
        storage = self.folder / "storage"
        return {
            "Name": "pytest-orthanc", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "SslEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {name: [aet, "127.0.0.1", 104] for name, aet in self.modalities.items()},
            "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False, "StorageCompression": False, "ConcurrentJobs": 1, "HttpTimeout": 30,
        }

    def start(self) -> OrthancServer:
        """Start on free loopback ports (retrying when a port was taken meanwhile); wait until it answers."""
        binary = orthanc_binary()
        if binary is None or dicomweb_plugin() is None:
            raise RuntimeError("Orthanc or its DICOMweb plugin is not installed (scripts/install-system-deps.sh)")
        self.folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TCP_NODELAY="1")
        for _ in range(5):
            self.http_port, self.dicom_port = free_port(), free_port()
            config = self.folder / "orthanc.json"
            config.write_text(json.dumps(self._config(), indent=1))
            with open(self.folder / "orthanc.log", "ab") as logfile:
                self.process = subprocess.Popen([binary, str(config)], stdout=logfile, stderr=subprocess.STDOUT,
                                                env=env, cwd=self.folder)
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"Orthanc did not start; see {self.folder / 'orthanc.log'}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, path: str, **kwargs) -> requests.Response:
        response = requests.get(f"{self.url}{path}", timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def post(self, path: str, data, **kwargs) -> requests.Response:
        response = requests.post(f"{self.url}{path}", data=data, timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def delete(self, path: str) -> None:
        requests.delete(f"{self.url}{path}", timeout=60).raise_for_status()
