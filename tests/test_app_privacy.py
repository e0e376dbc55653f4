"""Patient identifiers never reach the logs, the non-DICOM outputs or any output path.

The study is the demo phantom with distinctive identifiers written into every instance; the application runs
as the command line with DEBUG logging, once on good input and once on bad input (the error path prints
messages built from header values). The DICOM outputs must keep the patient (same study): that is the
positive control showing the identifiers were there to leak.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

REPO = Path(__file__).resolve().parent.parent
IDENTITY = {"PatientName": "QUIXOTE^ZEPHYRINE^ALMA", "PatientID": "ZX9931077Q",
            "PatientBirthDate": "19370412", "AccessionNumber": "ACQ77Z1942"}
# every form a value could take in text: raw, name components, a formatted birth date
NEEDLES = sorted({*IDENTITY.values(), *IDENTITY["PatientName"].split("^"), "1937-04-12", "12.04.1937"})


@pytest.fixture(scope="module")
def identified_study(app_small_phantom, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("identified") / "study"
    folder.mkdir()
    for path in app_small_phantom.folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / path.name)
    return folder


def run_app(study: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", "-i", str(study), "-o", str(out), "-l", "DEBUG",
                           *options], cwd=REPO, capture_output=True, text=True, timeout=480)


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle.lower() in text.lower()]


def test_no_identifier_in_logs_outputs_or_paths(identified_study, tmp_path):
    out = tmp_path / "out"
    run = run_app(identified_study, out)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "dynamic PET series with" in log  # the INFO/DEBUG records were captured, not silenced
    assert leaks(log) == []

    files = [p for p in out.rglob("*") if p.is_file()]
    assert leaks("\n".join(str(p.relative_to(tmp_path)) for p in out.rglob("*"))) == []
    dicom = [p for p in files if p.suffix == ".dcm"]
    assert dicom and all(pydicom.dcmread(p, stop_before_pixels=True).PatientID == IDENTITY["PatientID"]
                         for p in dicom)
    for path in set(files) - set(dicom):  # summary, CSV, NIfTI (header text included): leave the hospital
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("latin-1")
        assert leaks(text) == [], path


def test_no_identifier_in_an_error_report(identified_study, tmp_path):
    run = run_app(identified_study, tmp_path / "out", "--t-star", "70")
    log = run.stdout + run.stderr
    assert run.returncode == 2, log[-3000:]
    assert "t* = 70" in log
    assert leaks(log) == []
