"""Round trip through a real PACS (Orthanc on loopback): the phantom study goes in by C-STORE and comes out
as a MONAI Deploy Informatics Gateway hands a study over (the study archive, extracted); the app runs on it
with ``--send-to`` and its results come back into the same study, where Orthanc renders the derived Ki
series; STOW-RS, a refused AE title and an unreachable destination are tried too.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (scripts/install-system-deps.sh); the tests
that use the PACS are skipped without them. Needs the app's ``--send-to`` option (DicomSendOperator after
the writer).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from app.__main__ import main, parse_options
from dynamic_pet.dicom_send import SendError, parse_destination, send_files
from dynamic_pet.parametric_dicom import read_nifti
from tests.orthanc_server import OrthancServer, dicomweb_plugin, free_port, orthanc_binary

CALLING = "PATLAK"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
PET = "1.2.840.10008.5.1.4.1.1.128"


# ---- destinations (no network) ----

def test_parse_destination_forms():
    d = parse_destination("dicom://ORTHANC@127.0.0.1:4242")
    assert (d.protocol, d.called_aet, d.calling_aet, d.host, d.port) == ("c-store", "ORTHANC", "PATLAK",
                                                                         "127.0.0.1", 4242)
    assert parse_destination("dicom://PACS@host:104?calling=DYNPET").calling_aet == "DYNPET"
    web = parse_destination("https://user:s3cret@pacs.example.org:8443/orthanc/dicom-web/studies")
    assert (web.protocol, web.url, web.auth) == ("stow-rs", "https://pacs.example.org:8443/orthanc/dicom-web",
                                                 ("user", "s3cret"))
    assert "s3cret" not in str(web) + repr(web)


@pytest.mark.parametrize("text", ["dicom://127.0.0.1:4242", "dicom://PACS@host", "dicom://PACS@host:70000",
                                  "dicom://SEVENTEEN_CHARS_AE@host:104", "dicom://PA\\CS@host:104",
                                  "dicom://PACS@host:104?colling=X", "dicom://PACS@host:104?calling=",
                                  "ftp://host/dicom-web", "http:///dicom-web"])
def test_parse_destination_refuses_malformed(text):
    with pytest.raises(ValueError, match="destination|AE title"):
        parse_destination(text)


def test_a_file_that_is_not_dicom_is_refused_before_any_connection(tmp_path):
    (tmp_path / "notes.dcm").write_text("not DICOM")
    with pytest.raises(SendError, match="notes.dcm"):
        send_files([tmp_path / "notes.dcm"], f"dicom://ANY@127.0.0.1:{free_port()}", retries=0)


# ---- the PACS round trip ----

@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc and orthanc-dicomweb are not installed (run scripts/install-system-deps.sh as root)")
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), modalities={"patlak": CALLING}) as server:
        yield server


def _c_store_url(pacs: OrthancServer, calling: str = CALLING) -> str:
    return f"dicom://{pacs.aet}@127.0.0.1:{pacs.dicom_port}?calling={calling}"


@pytest.fixture(scope="module")
def gateway_input(pacs, phantom_demo_study, tmp_path_factory) -> Path:
    """The phantom study stored into the PACS by C-STORE, then exported from it as its study archive."""
    files = sorted((phantom_demo_study / "dicom").rglob("*.dcm"))
    report = send_files(files, _c_store_url(pacs))
    assert (report.files, report.attempts) == (len(files), 1)
    (study_id,) = pacs.get("/studies").json()
    folder = tmp_path_factory.mktemp("gateway") / "input"
    with zipfile.ZipFile(io.BytesIO(pacs.get(f"/studies/{study_id}/archive").content)) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def app_output(pacs, gateway_input, tmp_path_factory) -> Path:
    """The app run on the exported study with --send-to the PACS (C-STORE)."""
    options, _ = parse_options(["app", "--device", "cpu", "--send-to", _c_store_url(pacs)])
    assert options.get("send_to") == _c_store_url(pacs), "the app has no --send-to option (DicomSendOperator)"
    out = tmp_path_factory.mktemp("app") / "output"
    assert main(["app", "-i", str(gateway_input), "-o", str(out), "--method", "patlak",
                 "--send-to", _c_store_url(pacs), "--quiet"]) == 0
    return out


def _headers(folder: Path) -> dict[Path, pydicom.Dataset]:
    return {p: pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*.dcm"))}


def _orthanc_id(pacs: OrthancServer, sop_instance_uid: str) -> str:
    (found,) = [r for r in pacs.post("/tools/lookup", sop_instance_uid).json() if r["Type"] == "Instance"]
    return found["ID"]


def _series_in_pacs(pacs: OrthancServer) -> dict[str, int]:
    """SeriesInstanceUID -> number of instances, over the one study the PACS holds."""
    (study,) = pacs.get("/studies?expand").json()
    return {s["MainDicomTags"]["SeriesInstanceUID"]: len(s["Instances"])
            for s in pacs.get(f"/studies/{study['ID']}/series").json()}


def test_exported_study_holds_every_instance_stored(phantom_demo_study, gateway_input):
    sent = {ds.SOPInstanceUID for ds in _headers(phantom_demo_study / "dicom").values()}
    exported = _headers(gateway_input)
    assert {ds.SOPInstanceUID for ds in exported.values()} == sent
    assert len(exported) == len(sent)


def test_results_arrive_in_the_same_study(pacs, phantom_demo_study, app_output):
    source_files = sorted((phantom_demo_study / "dicom").rglob("*.dcm"))
    source = pydicom.dcmread(source_files[0], stop_before_pixels=True)
    outputs = _headers(app_output / "dicom")
    local = Counter(ds.SeriesInstanceUID for ds in outputs.values())
    # Ki and V, each as a Parametric Map and as a derived PET series, and the report as Encapsulated PDF
    assert len(local) == 5
    assert sum(ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" for ds in outputs.values()) == 1
    (study,) = pacs.get("/studies").json()
    assert pacs.get(f"/studies/{study}").json()["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
    assert _series_in_pacs(pacs) == {source.SeriesInstanceUID: len(source_files), **dict(local)}
    for path, ds in outputs.items():  # the float Parametric Maps came through bit for bit
        if ds.SOPClassUID == PARAMETRIC_MAP:
            stored = pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{_orthanc_id(pacs, ds.SOPInstanceUID)}"
                                                         "/file").content))
            assert stored.FloatPixelData == pydicom.dcmread(path).FloatPixelData


def _along_normal(ds: pydicom.Dataset) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, float)
    return float(np.cross(iop[:3], iop[3:]) @ np.asarray(ds.ImagePositionPatient, float))


def _truth_on_slice(ds: pydicom.Dataset, truth: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The truth image sampled at the centre of every pixel of ``ds`` (nearest voxel)."""
    rows, cols = np.mgrid[0:int(ds.Rows), 0:int(ds.Columns)]
    iop = np.asarray(ds.ImageOrientationPatient, float)
    d_row, d_col = (float(s) for s in ds.PixelSpacing)
    lps = (np.asarray(ds.ImagePositionPatient, float)[:, None] + np.outer(iop[:3], cols.ravel() * d_col)
           + np.outer(iop[3:], rows.ravel() * d_row))
    x, y, z = np.rint((np.linalg.inv(affine) @ np.vstack([lps, np.ones(rows.size)]))[:3]).astype(int)
    assert (z.min() >= 0 and z.max() < truth.shape[0] and y.min() >= 0 and y.max() < truth.shape[1]
            and x.min() >= 0 and x.max() < truth.shape[2])
    return truth[z, y, x].reshape(rows.shape)


def test_orthanc_renders_the_derived_ki_series_bright_where_true_ki_is_high(pacs, phantom_demo_study,
                                                                            app_output):
    """Orthanc's own decoder (``/rendered``, as its explorer shows it) on the middle Ki slice.

    Orthanc 1.10 cannot apply a window narrower than 1 (ours is 0 to ~0.02 /min, LINEAR_EXACT): zero comes
    out mid-grey (~125 of 255) rather than black, so this checks contrast and agreement, not a black
    background."""
    truth, affine = read_nifti(phantom_demo_study / "truth" / "ki.nii.gz")
    slices = sorted(_headers(app_output / "dicom" / "ki_pet").values(), key=_along_normal)
    assert {ds.SOPClassUID for ds in slices} == {PET}
    ds = slices[len(slices) // 2]
    response = pacs.get(f"/instances/{_orthanc_id(pacs, ds.SOPInstanceUID)}/rendered",
                        headers={"Accept": "image/png"})
    rendered = np.asarray(Image.open(io.BytesIO(response.content)).convert("L"), float)
    true_ki = _truth_on_slice(ds, truth, affine)
    assert rendered.shape == true_ki.shape
    assert rendered.max() > 128 and rendered.std() > 10, "preview is blank or nearly uniform"
    high = true_ki > np.percentile(true_ki, 90)
    assert rendered[high].mean() > rendered[~high].mean() + 25
    assert np.corrcoef(rendered.ravel(), true_ki.ravel())[0, 1] > 0.5


def test_stow_rs_into_the_same_study(pacs, app_output):
    outputs = _headers(app_output / "dicom")
    ours = {ds.SeriesInstanceUID for ds in outputs.values()}
    before = _series_in_pacs(pacs)
    for series_id in pacs.get("/series").json():
        if pacs.get(f"/series/{series_id}").json()["MainDicomTags"]["SeriesInstanceUID"] in ours:
            pacs.delete(f"/series/{series_id}")
    assert not ours & set(_series_in_pacs(pacs))
    report = send_files(list(outputs), f"{pacs.url}/dicom-web")
    assert (report.protocol, report.files, report.attempts) == ("stow-rs", len(outputs), 1)
    assert _series_in_pacs(pacs) == before
    study_uid = next(iter(outputs.values())).StudyInstanceUID
    qido = pacs.get(f"/dicom-web/studies/{study_uid}/series", headers={"Accept": "application/dicom+json"}).json()
    assert ours <= {item["0020000E"]["Value"][0] for item in qido}


def test_pacs_refuses_an_unknown_calling_ae_title(pacs, app_output):
    files = sorted((app_output / "dicom").rglob("*.dcm"))
    before = _series_in_pacs(pacs)
    with pytest.raises(SendError, match=r"attempt\(s\): association rejected \(.*AE title") as refused:
        send_files(files, _c_store_url(pacs, calling="INTRUDER"), retries=3)  # permanent: not retried
    # The rejection ends the sending at once. An earlier attempt may find Orthanc busy and fail without an
    # answer (transient, retried: seen under full CPU load), so the count is bounded, not exactly 1.
    attempts = int(re.search(r"after (\d+) attempt", str(refused.value)).group(1))
    assert attempts < 4, "a permanent rejection must not use up the retries"
    assert f"{len(files)} of {len(files)} file(s) not stored" in str(refused.value)
    assert _series_in_pacs(pacs) == before


def _digests(files: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("scheme", ["dicom", "http"])
def test_unreachable_destination_fails_after_retries_and_keeps_outputs(app_output, caplog, scheme):
    files = sorted((app_output / "dicom").rglob("*.dcm"))
    before = _digests(files)
    port = free_port()  # nothing listens there
    dest = f"dicom://PACS@127.0.0.1:{port}" if scheme == "dicom" else f"http://127.0.0.1:{port}/dicom-web"
    with caplog.at_level(logging.WARNING, logger="dynamic_pet.dicom_send"), pytest.raises(SendError) as failed:
        send_files(files, dest, retries=2, backoff_s=0.01, timeout_s=5)
    message = str(failed.value)
    assert f"127.0.0.1:{port}" in message and "3 attempt(s)" in message
    assert f"{len(files)} of {len(files)} file(s) not stored" in message
    assert "PHANTOM" not in message  # no patient data
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2
    assert _digests(sorted((app_output / "dicom").rglob("*.dcm"))) == before
