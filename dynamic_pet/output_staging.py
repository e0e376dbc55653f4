"""Outputs appear whole or not at all.

Everything is written into a staging folder beside the output folder (same file system, so the final
step is a rename); only when all of it is written is it moved into the output folder. On any exception
the staging folder is removed and the output folder is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def staged_output(out_dir: str | Path):
    """Context manager yielding a staging folder whose contents are moved into ``out_dir`` on success."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clashes = []
    parent = out_dir.parent if os.access(out_dir.parent, os.W_OK) else out_dir
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=parent))
    try:
        yield staging
        clashes = [p.name for p in staging.iterdir() if (out_dir / p.name).exists()]
        if clashes:
            raise InputError(f"the output folder already holds {', '.join(sorted(clashes))}; give an empty "
                             "output folder so no earlier result is mixed with this one", path=out_dir)
        # summary.json last: its presence marks a complete result
        for item in sorted(staging.iterdir(), key=lambda p: p.name == "summary.json"):
            shutil.move(str(item), out_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
