"""README figure: one axial slice of the demo phantom (early and late activity, true Ki, 10 %-dose frame).

python scripts/phantom_figure.py [--out docs/phantom.png] [--seed 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from phantom.anatomy import LABELS  # noqa: E402
from phantom.simulate import simulate_study  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/phantom.png"))
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()
    full = simulate_study("demo", args.seed, 1.0)
    low = simulate_study("demo", args.seed, 0.1)
    labels = full.anatomy.labels
    z = int(np.argmax((labels == LABELS["lv_blood"]).sum(axis=(1, 2))))  # slice through the left ventricle
    early = int(np.argmax(full.frame_integrals.cp_mean))
    starts = full.schedule.start_s / 60
    panels = [
        (full.activity[early, z] / 1000, f"100 % dose, frame {early + 1} ({starts[early] * 60:.0f} s): kBq/mL", "gray_r"),
        (full.activity[-1, z] / 1000, f"100 % dose, last frame ({starts[-1]:.0f}-60 min): kBq/mL", "gray_r"),
        (full.ki[z] * 100, "true Ki: mL/min/100 mL", "magma"),
        (low.activity[-1, z] / 1000 / 0.1, "10 % dose, last frame (x10): kBq/mL", "gray_r"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (img, title, cmap) in zip(axes, panels):
        vmax = np.percentile(img, 99.8)
        shown = ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"Demo phantom, seed {args.seed}, axial slice {z} (through the left ventricle)", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
