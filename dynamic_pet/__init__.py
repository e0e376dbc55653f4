"""Framework-free science of the product: dynamic PET DICOM reading, input functions, Patlak
estimation, diffusion-prior samplers and parametric DICOM writing.

Nothing in this package imports ``monai.deploy``; the MONAI Deploy operators in ``operators/`` are thin
adapters over these modules.
"""

__version__ = "0.1.0"
