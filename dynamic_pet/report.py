"""One-page PDF report of a run, also stored in the source study as a DICOM Encapsulated PDF.

``folder/report.pdf``: A4 portrait, for the physicist checking a run: the input function (frame averages
as steps, with the region it came from), Patlak plots of the blood pool and the hottest regions with the
fitted line and t*, a coronal Ki maximum-intensity projection and axial Ki slices in mL/min/100 mL, and
the method, frames, quality flags and timings. The page shows no patient name or ID: only the study date
and a short hash of the StudyInstanceUID.

``folder/dicom/report/000001.dcm``: the same PDF bytes as an Encapsulated PDF instance (PS3.3 A.45.1) in
the source study (patient and study attributes copied, new series).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.figure import Figure
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from . import __version__
from .estimation import ParametricResult
from .input_function import InputFunctionResult
from .patlak import design_matrix, frame_weights
from .study import DynamicStudy

NOTICE = "RESEARCH USE ONLY \N{EM DASH} not for diagnosis"
SERIES_NUMBER = 910  # parametric series use 900-905 (see parametric_dicom)
SERIES_DESCRIPTION = "Patlak report RESEARCH USE ONLY"
HOT_PERCENTILE = 99.5
N_HOT_REGIONS = 3
A4_INCHES = (8.27, 11.69)

# Patient and General Study module attributes copied into the report instance (the PDF page shows none).
_COPIED = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
           "PatientSex", "PatientAge", "PatientWeight", "PatientSize", "StudyInstanceUID", "StudyDate",
           "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


def write_report(folder: Path, study: DynamicStudy, idif: InputFunctionResult, result: ParametricResult,
                 summary: dict) -> tuple[Path, Path]:
    """Write ``folder/report.pdf`` and the same PDF as ``folder/dicom/report/000001.dcm``.

    Parameters
    ----------
    folder:
        Output folder of the run.
    study, idif, result:
        The loaded study, the input function used and the parametric result.
    summary:
        The run summary (``write_results``' return value): method description, timings, versions.

    Returns
    -------
    tuple of Path
        The PDF and the DICOM file.
    """
    folder = Path(folder)
    pdf = folder / "report.pdf"
    figure = report_figure(study, idif, result, summary)
    figure.savefig(pdf, format="pdf", metadata={"Title": "Patlak parametric imaging report",
                                                "Subject": NOTICE, "Creator": f"dynamic_pet {__version__}"})
    dcm = folder / "dicom" / "report" / "000001.dcm"
    dcm.parent.mkdir(parents=True, exist_ok=True)
    encapsulated_pdf(pdf.read_bytes(), study.slice_datasets).save_as(dcm, enforce_file_format=True)
    return pdf, dcm


# ---------------------------------------------------------------- regions


def hot_regions(ki: np.ndarray, body: np.ndarray, exclude: np.ndarray | None = None,
                n: int = N_HOT_REGIONS) -> list[np.ndarray]:
    """The ``n`` connected regions of voxels above the 99.5th Ki percentile in the body, largest total
    Ki first (so single noisy voxels do not outrank an organ or a lesion)."""
    inside = body if exclude is None else body & ~exclude
    if not inside.any():
        return []
    hot = (ki > np.percentile(ki[inside], HOT_PERCENTILE)) & inside
    labels, count = ndimage.label(hot, structure=np.ones((3, 3, 3)))
    totals = ndimage.sum(ki, labels, index=np.arange(1, count + 1))
    return [labels == k + 1 for k in np.argsort(totals)[::-1][:n]]


def _volume_ml(mask: np.ndarray, spacing_mm) -> float:
    return float(mask.sum() * np.prod(spacing_mm)) / 1000.0


# ---------------------------------------------------------------- page


def report_figure(study: DynamicStudy, idif: InputFunctionResult, result: ParametricResult,
                  summary: dict) -> Figure:
    """The report page as a matplotlib Figure (not attached to pyplot)."""
    fig = Figure(figsize=A4_INCHES)
    grid = fig.add_gridspec(5, 4, height_ratios=[0.4, 1.5, 1.2, 2.2, 1.4], hspace=0.45, wspace=0.45,
                            left=0.08, right=0.95, top=0.96, bottom=0.04)
    _header(fig.add_subplot(grid[0, :]), study, summary)
    _input_function_panel(fig.add_subplot(grid[1, :]), idif, result.fit.t_star_min)
    hot = hot_regions(result.ki, result.fit.quadratic.body_mask, idif.mask)
    panels = ([("blood pool", idif.mask)] if idif.mask is not None else []) + [
        (f"hot region {k + 1} ({_volume_ml(m, study.spacing_mm):.1f} mL)", m) for k, m in enumerate(hot)]
    for k, (name, mask) in enumerate(panels):
        _patlak_panel(fig.add_subplot(grid[2, k]), study, idif, result, name, mask)
    _ki_images(fig, grid[3, :], study, result, hot)
    _facts(fig.add_subplot(grid[4, :]), idif, result, summary)
    return fig


def _header(ax, study: DynamicStudy, summary: dict) -> None:
    ax.axis("off")
    date = str(study.slice_datasets[0].get("StudyDate", "") or "unknown")
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    short_id = hashlib.sha256(study.study_instance_uid.encode()).hexdigest()[:8]
    ax.text(0, 1, "Dynamic PET \N{EN DASH} Patlak parametric imaging", fontsize=15, weight="bold", va="top")
    ax.text(0, 0.5, NOTICE, fontsize=10, weight="bold", color="white", va="top",
            bbox={"facecolor": "#b00020", "edgecolor": "none", "pad": 3})
    ax.text(0, 0.05, f"Study date {date}    study ref. #{short_id}    {summary.get('method_description', '')}",
            fontsize=8.5, va="top")


def _input_function_panel(ax, idif: InputFunctionResult, t_star_min: float) -> None:
    inp = idif.input_function
    start, end, cp = inp.frame_start_min, inp.frame_end_min, inp.cp_frame_mean / 1000.0
    ax.hlines(cp, start, end, color="#1f4e9c", lw=2, label="frame average")
    ax.vlines(start[1:], cp[:-1], cp[1:], color="#1f4e9c", lw=0.8)
    ax.axvline(t_star_min, color="#d95f02", ls="--", lw=1)
    ax.text(t_star_min, ax.get_ylim()[1] * 0.95, f" t* = {t_star_min:g} min", color="#d95f02", va="top",
            fontsize=8)
    ax.set(xlabel="time after injection (min)", ylabel="plasma activity (kBq/mL)", xlim=(0, end[-1]))
    volume = f", {idif.volume_ml:.1f} mL" if idif.mask is not None else ""
    ax.set_title(f"Input function: {idif.source}{volume}; AUC {inp.area_under_curve() / 1000:.0f} kBq·min/mL",
                 fontsize=9.5, loc="left")
    early = ax.inset_axes([0.45, 0.35, 0.5, 0.58])
    shown = start < 5.0
    early.hlines(cp[shown], start[shown], end[shown], color="#1f4e9c", lw=2)
    early.vlines(start[shown][1:], cp[shown][:-1], cp[shown][1:], color="#1f4e9c", lw=0.8)
    early.set_xlim(0, min(5.0, end[-1]))
    early.set_title("first 5 min", fontsize=7)
    early.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def _patlak_panel(ax, study: DynamicStudy, idif: InputFunctionResult, result: ParametricResult, name: str,
                  mask: np.ndarray) -> None:
    inp, fit = idif.input_function, result.fit
    tac = study.activity[:, mask].mean(axis=1)
    shown = np.arange(int(np.argmax(inp.cp_frame_mean)) + 1, tac.size)  # after the bolus peak
    with np.errstate(divide="ignore", invalid="ignore"):  # Cp is 0 before the bolus arrives
        x = inp.integral_frame_mean() / inp.cp_frame_mean
        y = tac / inp.cp_frame_mean
    used = fit.frames_used
    a = design_matrix(inp, used)
    w = frame_weights(inp.frame_start_min[used], inp.frame_end_min[used], study.half_life_s / 60.0)
    ki, v = np.linalg.solve(a.T @ (w[:, None] * a), a.T @ (w * tac[used]))
    ax.plot(x[shown], y[shown], "o", mfc="none", color="grey", ms=3.5)
    ax.plot(x[used], y[used], "o", color="#1b9e77", ms=3.5)
    line_x = np.array([x[used].min(), x[used].max()])
    ax.plot(line_x, ki * line_x + v, color="#7570b3", lw=1.5)
    ax.axvline(x[used[0]], color="#d95f02", ls="--", lw=0.8)
    ax.set_title(name, fontsize=8)
    ax.set_xlabel("∫Cp / Cp (min)", fontsize=7.5)
    ax.set_ylabel("C / Cp", fontsize=7.5)
    ax.tick_params(labelsize=6.5)
    ax.ticklabel_format(useOffset=False)
    low, high = min(0.0, float(y[shown].min())), float(y[shown].max())
    ax.set_ylim(low, high + 0.1 * max(high - low, 1e-3))
    text = f"Ki {100 * ki:.2f} mL/min/100 mL\nV {v:.2f}".replace("Ki -0.00", "Ki 0.00")
    if result.method != "patlak":
        text += f"\nKi map mean {100 * float(result.ki[mask].mean()):.2f}"
    ax.text(0.97, 0.04, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=6)


def _display_slice_up(study: DynamicStudy) -> bool:
    """True when Z increases towards the head (LPS +z), so a coronal image is drawn with origin lower."""
    return bool(study.affine[2, 2] >= 0)


def _ki_images(fig, cell, study: DynamicStudy, result: ParametricResult, hot: list[np.ndarray]) -> None:
    ki = 100.0 * result.ki  # mL/min/100 mL
    body = result.fit.quadratic.body_mask
    top = float(np.percentile(ki[body], 99.9)) if body.any() else float(ki.max())
    top = top if top > 0 else 1.0
    inner = cell.subgridspec(2, 4, width_ratios=[2.2, 1, 1, 0.08], hspace=0.25, wspace=0.15)
    dz, dy, dx = study.spacing_mm
    origin = "lower" if _display_slice_up(study) else "upper"
    mip = fig.add_subplot(inner[:, 0])
    image = mip.imshow(np.clip(ki, 0, None).max(axis=1), cmap="inferno", vmin=0, vmax=top, origin=origin,
                       aspect=dz / dx, interpolation="nearest")
    mip.set_title("Ki, coronal MIP", fontsize=8.5)
    mip.set_xticks([])
    mip.set_yticks([])
    slices = _representative_slices(ki, body, hot)
    for k, z in enumerate(slices):
        ax = fig.add_subplot(inner[k // 2, 1 + k % 2])
        ax.imshow(ki[z], cmap="inferno", vmin=0, vmax=top, aspect=dy / dx, interpolation="nearest")
        ax.set_title(f"axial slice {z + 1}", fontsize=7.5)
        ax.set_xticks([])
        ax.set_yticks([])
        mip.axhline(z, color="cyan", lw=0.6, alpha=0.8)
    bar = fig.colorbar(image, cax=fig.add_subplot(inner[:, 3]))
    bar.set_label("Ki (mL/min/100 mL)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _representative_slices(ki: np.ndarray, body: np.ndarray, hot: list[np.ndarray], n: int = 4) -> list[int]:
    """Slices through the hot regions' centres, then the slice of largest body area; distinct, sorted."""
    chosen = [int(round(ndimage.center_of_mass(m)[0])) for m in hot if m.any()]
    by_area = np.argsort(body.sum(axis=(1, 2)))[::-1]
    for z in [int(z) for z in by_area] + list(range(ki.shape[0])):
        if len(set(chosen)) >= min(n, ki.shape[0]):
            break
        if all(abs(z - c) > 2 for c in chosen):
            chosen.append(z)
    return sorted(set(chosen))[:n]


def _facts(ax, idif: InputFunctionResult, result: ParametricResult, summary: dict) -> None:
    ax.axis("off")
    fit = result.fit
    frames = fit.frames_used
    start = idif.input_function.frame_start_min
    end = idif.input_function.frame_end_min
    flags = [f"input function: {f}" for f in idif.quality_flags]
    flags += [f"estimation: {f}" for f in result.details.get("quality_flags", [])]
    notes = list(summary.get("loading_notes", []))
    timings = summary.get("timings_s", {})
    median = summary.get("ki_body_median_ml_min_ml")
    lines = [
        f"Method: {summary.get('method_description', result.method)}"
        + (f"  (samples {result.details.get('samples')}, device {result.details.get('device')})"
           if result.details else ""),
        f"t* = {fit.t_star_min:g} min; frames used: {frames.size} of {start.size} "
        f"(frames {frames[0] + 1}\N{EN DASH}{frames[-1] + 1}, {start[frames[0]]:.1f}\N{EN DASH}"
        f"{end[frames[-1]]:.1f} min); weighted least squares over frame duration and decay",
        "Body median Ki: " + (f"{100 * median:.2f} mL/min/100 mL" if median is not None else "n/a")
        + f"; hot regions: voxels above the {HOT_PERCENTILE:g}th Ki percentile in the body",
        "Timings (s): " + (", ".join(f"{k} {v:.1f}" for k, v in timings.items()) or "not recorded"),
        "Quality flags: " + ("none" if not flags else ""),
    ]
    lines += [f"  \N{BULLET} {f}" for f in flags[:4]]
    lines += ["Loading notes: " + ("none" if not notes else "")] + [f"  \N{BULLET} {n}" for n in notes[:4]]
    versions = summary.get("versions", {})
    lines.append("Software: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "python"))
    ax.text(0, 1, "\n".join(lines), va="top", fontsize=7.5, wrap=True, linespacing=1.3)
    ax.text(0.5, -0.04, f"{NOTICE}.\nParametric values depend on the input function and t*: check the plots "
            "above before using them.", ha="center", va="top", fontsize=7.5, color="#b00020",
            weight="bold", transform=ax.transAxes)


# ---------------------------------------------------------------- DICOM


def encapsulated_pdf(pdf: bytes, sources: list[pydicom.Dataset]) -> pydicom.FileDataset:
    """An Encapsulated PDF instance holding ``pdf`` in the study of ``sources`` (new series).

    Patient and study attributes come from ``sources[0]``; the source instances are listed in the
    Source Instance Sequence. Odd-length PDFs get one pad byte in the file; EncapsulatedDocumentLength
    keeps the true length, so ``EncapsulatedDocument[:EncapsulatedDocumentLength]`` is the PDF.
    """
    if not pdf.startswith(b"%PDF"):
        raise ValueError("the content to encapsulate is not a PDF (it does not start with %PDF)")
    source = sources[0]
    now = datetime.datetime.now()
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.FileDataset(None, pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
    for keyword in _COPIED:
        if keyword in source:
            ds[keyword] = copy.deepcopy(source[keyword])  # the element as it is, not re-validated
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):  # type 2: present, maybe empty
        ds.setdefault(keyword, "")
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.Manufacturer = "dynamic_pet"
    ds.SoftwareVersions = f"dynamic_pet {__version__}"
    ds.ConversionType = "WSD"  # workstation-generated
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"  # the page carries no patient identifiers
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = "Patlak parametric imaging report (research use only)"
    code = pydicom.Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [code]
    ds.VerificationFlag = "UNVERIFIED"
    ds.SourceInstanceSequence = [_reference(s) for s in sources]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def _reference(source: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def read_encapsulated_pdf(path: Path) -> bytes:
    """The PDF stored in an Encapsulated PDF file, without the pad byte DICOM may add."""
    ds = pydicom.dcmread(path)
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    return data[:int(length)] if length else data
