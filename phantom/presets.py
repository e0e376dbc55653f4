"""Phantom presets: field of view, grid and scanner settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    shape: tuple[int, int, int]  # (Z, Y, X)
    voxel_mm: tuple[float, float, float]  # (dz, dy, dx)
    depth_range_mm: tuple[float, float]  # axial extent, mm from the vertex (top of the head) downwards
    psf_fwhm_mm: float  # scanner resolution (image-space Gaussian before projection)
    n_angles: int
    sensitivity: float  # detected coincidences per decay in a slice, before attenuation
    osem_iterations: int = 3
    osem_subsets: int = 8


PRESETS = {
    # Chest and upper abdomen: heart, aorta, lungs, liver, spleen; seconds to simulate.
    "demo": Preset("demo", (48, 96, 96), (4.0, 4.0, 4.0), (400.0, 592.0), 5.0, 96, 0.01),
    # Aortic arch to kidneys.
    "torso": Preset("torso", (96, 128, 128), (4.0, 3.5, 3.5), (330.0, 714.0), 4.5, 128, 0.01),
    # The demo's anatomy and scanner on a 2 mm grid, as current scanners reconstruct on fine matrices: a pixel
    # size the prior was not trained at (its training presets have 3.5-4 mm pixels).
    "demo-2mm": Preset("demo-2mm", (96, 192, 192), (2.0, 2.0, 2.0), (400.0, 592.0), 5.0, 192, 0.01),
    # Vertex to mid-thigh on a long axial field of view (total-body scanner: higher sensitivity, resolution).
    "total-body": Preset("total-body", (400, 192, 192), (3.0, 3.0, 3.0), (0.0, 1200.0), 3.5, 192, 0.05),
}
