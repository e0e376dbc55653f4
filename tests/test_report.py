"""The one-page PDF report and its DICOM Encapsulated PDF copy, on the demo phantom."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from matplotlib.image import imread

from dynamic_pet.dicom_series import load_dynamic_study
from dynamic_pet.estimation import estimate, noise_flags
from dynamic_pet.input_function import input_function_for_study
from dynamic_pet.report import encapsulated_pdf, hot_regions, read_encapsulated_pdf, write_report
from dynamic_pet.results import write_results

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils not installed")


@pytest.fixture(scope="module")
def run(phantom_demo_study, tmp_path_factory):
    """The pipeline's objects on the phantom, its written results and the report (image-derived input)."""
    study = load_dynamic_study(phantom_demo_study / "dicom")
    idif = input_function_for_study(study)
    result = estimate(study, idif.input_function)
    study.timings_s.update({"loading": 1.0, "estimation": 0.5})
    folder = tmp_path_factory.mktemp("report") / "out"
    summary = write_results(folder, study, idif, result, {"method": "patlak"})
    pdf, dcm = write_report(folder, study, idif, result, summary)
    return study, idif, result, summary, pdf, dcm


def _render(pdf, tmp_path) -> list:
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    return [imread(p)[..., :3] for p in sorted(tmp_path.glob("page*.png"))]


def _check_page(page: np.ndarray) -> None:
    ink = page.min(axis=2) < 0.9
    colour = (page.max(axis=2) - page.min(axis=2)) > 0.25
    assert ink.mean() > 0.08, f"only {ink.mean():.1%} of the page is not white"
    assert colour.mean() > 0.02, f"only {colour.mean():.1%} of the page is in colour"


def _text(pdf) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


def test_report_is_one_a4_page_with_plots_and_colour(run, tmp_path):
    pdf = run[4]
    pages = _render(pdf, tmp_path)
    assert len(pages) == 1
    _check_page(pages[0])
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert "A4" in info


def test_report_text_names_method_and_notice_but_no_patient(run):
    study, idif, result, summary, pdf, _ = run
    text = _text(pdf)
    assert "RESEARCH USE ONLY" in text and "not for diagnosis" in text
    assert f"t* = {result.fit.t_star_min:g} min" in text
    assert f"frames used: {result.fit.frames_used.size} of {study.shape[0]}" in text
    assert idif.source in text and "mL/min/100 mL" in text
    source = study.slice_datasets[0]
    date = str(source.StudyDate)
    assert f"{date[:4]}-{date[4:6]}-{date[6:]}" in text
    for identifier in (str(source.PatientID), str(source.PatientName), str(source.PatientName).split("^")[0],
                       study.study_instance_uid):
        assert identifier not in text
        assert identifier.encode() not in pdf.read_bytes()  # nor in the document's metadata


def test_dicom_copy_is_valid_same_study_and_holds_the_same_pdf(run):
    study, _, _, _, pdf, dcm = run
    assert dcm.relative_to(pdf.parent).as_posix() == "dicom/report/000001.dcm"
    assert read_encapsulated_pdf(dcm) == pdf.read_bytes()
    ds = pydicom.dcmread(dcm)
    source = study.slice_datasets[0]
    assert ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert ds.StudyInstanceUID == source.StudyInstanceUID == study.study_instance_uid
    assert ds.SeriesInstanceUID not in (source.SeriesInstanceUID, study.series_instance_uid)
    assert (ds.PatientID, ds.PatientName) == (source.PatientID, source.PatientName)
    assert "RESEARCH" in ds.SeriesDescription.upper()
    assert [r.ReferencedSOPInstanceUID for r in ds.SourceInstanceSequence] == \
        [s.SOPInstanceUID for s in study.slice_datasets]
    if shutil.which("dciodvfy"):
        res = subprocess.run(["dciodvfy", str(dcm)], capture_output=True, text=True)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors


def test_odd_length_pdf_round_trips_and_non_pdf_is_refused(run, tmp_path):
    sources = run[0].slice_datasets
    odd = b"%PDF-1.4\n% minimal odd-length body!\n%%EOF"
    assert len(odd) % 2 == 1
    path = tmp_path / "odd.dcm"
    encapsulated_pdf(odd, sources).save_as(path, enforce_file_format=True)
    assert read_encapsulated_pdf(path) == odd
    with pytest.raises(ValueError, match="not a PDF"):
        encapsulated_pdf(b"GIF89a", sources)


def test_report_without_blood_pool_region_for_a_csv_input_function(run, tmp_path):
    study, idif, result, summary, _, _ = run
    csv_idif = replace(idif, source="csv", mask=None, volume_ml=0.0)
    pdf, dcm = write_report(tmp_path, study, csv_idif, result, summary)
    pages = _render(pdf, tmp_path)
    assert len(pages) == 1
    _check_page(pages[0])
    text = _text(pdf)
    assert "Input function: csv" in text and "blood pool" not in text
    assert read_encapsulated_pdf(dcm) == pdf.read_bytes()


def test_flags_and_notes_stay_above_the_notice(run, tmp_path):
    """A low-dose study can carry an input-function flag, an estimation flag and several loading notes at once:
    every line of the facts block must end above the research-use notice at the foot of the page."""
    study, idif, result, summary, _, _ = run
    flagged = replace(idif, quality_flags=["left-ventricle cavity used (no aorta found): myocardial spill-in may "
                                           "raise the tail"])
    noisy = replace(result, details={"samples": 1, "device": "cpu", "quality_flags": noise_flags((0.44, 0.38))})
    notes = ["frame starts from the per-frame acquisition date/time",
             "DecayCorrection START: decay-corrected from the START reference (0.0 s after injection) to the "
             "injection time"]
    pdf, _ = write_report(tmp_path, study, flagged, noisy, {**summary, "loading_notes": notes})
    text = _text(pdf)
    assert "estimation: Patlak maps noisier" in text and "input function: left-ventricle" in text
    words = re.findall(r'<word xMin="[\d.]+" yMin="([\d.]+)" xMax="[\d.]+" yMax="([\d.]+)">([^<]*)</word>',
                       subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True,
                                      check=True).stdout)
    software_bottom = max(float(y1) for _, y1, w in words if w == "Software:")
    notice_top = max(float(y0) for y0, _, w in words if w == "RESEARCH")  # the notice at the foot, not the header
    assert software_bottom < notice_top


def test_hot_regions_rank_a_hot_organ_above_a_hot_noise_voxel():
    rng = np.random.default_rng(0)
    ki = rng.normal(0.01, 0.001, (40, 40, 40))
    body = np.ones(ki.shape, bool)
    ki[5:9, 5:10, 5:10] = rng.normal(0.05, 0.002, (4, 5, 5))  # a hot organ of 100 voxels
    ki[15, 20, 20] = 0.5  # one very hot noise voxel
    ki[12:14, 20:23, 5:8] = 0.04  # a smaller hot lesion
    regions = hot_regions(ki, body)
    assert regions[0][6, 7, 7] and regions[0].sum() == 100
    assert any(r[15, 20, 20] for r in regions[1:])
    excluded = hot_regions(ki, body, exclude=regions[0])
    assert not any(r[6, 7, 7] for r in excluded)
