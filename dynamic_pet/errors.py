"""The product's own error type: every refusal of bad input is a :class:`InputError`."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Input the product cannot turn into a correct parametric image.

    Parameters
    ----------
    message:
        What is wrong, in words a PET physicist or PACS administrator can act on.
    path:
        The file (or folder) concerned, when there is one.
    tag:
        The DICOM attribute concerned, e.g. ``"(0054,1300) FrameReferenceTime"``.
    """

    def __init__(self, message: str, path: str | Path | None = None, tag: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.tag = tag
        parts = [message]
        if tag:
            parts.append(f"tag {tag}")
        if self.path:
            parts.append(f"file {self.path}")
        super().__init__("; ".join(parts))
