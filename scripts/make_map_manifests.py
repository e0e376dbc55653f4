"""MONAI Application Package manifests (app.json, pkg.json) from app.yaml, and an app folder to package.

The manifests are made by the holoscan-cli 4.2 packager's own code (``ApplicationConfiguration``), so they
hold what ``monai-deploy package`` would write, with the command and platform of our Dockerfile:

    python scripts/make_map_manifests.py --out build/map                    # app.json, pkg.json
    python scripts/make_map_manifests.py --out /etc/holoscan --app /opt/holoscan/app \\
        --models /opt/holoscan/models/prior --platform-config cpu           # inside the Dockerfile

``monai-deploy package APP`` copies only the folder APP into the image and installs APP/requirements.txt;
this repository's app/ imports operators/, dynamic_pet/ and models/ beside it. ``--stage-app DIR`` writes a
self-contained copy (app files, those packages, requirements.txt) for the packager:

    python scripts/make_map_manifests.py --stage-app build/map/app
    monai-deploy package build/map/app -m models/prior -c app.yaml -t dynamic-pet-patlak:0.1.0 --platform x86_64
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import metadata
from pathlib import Path

from holoscan_cli.common.enum_types import SdkType
from holoscan_cli.packager.config_reader import ApplicationConfiguration
from holoscan_cli.packager.models import Models
from holoscan_cli.packager.parameters import PackageBuildParameters

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = ["python3", "-m", "app"]  # the Dockerfile's ENTRYPOINT
PACKAGES = ("operators", "dynamic_pet")  # imported by app/, copied beside its files


def read_config(path: Path) -> ApplicationConfiguration:
    """app.yaml, checked by the packager (raises its InvalidApplicationConfigurationError)."""
    config = ApplicationConfiguration()
    config.read(Path(path))
    return config


def manifests(config_path: Path, app: Path = REPO / "app", models: Path = REPO / "models" / "prior",
              platform_config: str = "dgpu") -> tuple[dict, dict]:
    """(app.json, pkg.json) contents for an image with the app at /opt/holoscan/app and each model folder
    under /opt/holoscan/models/<name>.

    Parameters
    ----------
    config_path: app.yaml.
    app: the application folder (with ``__main__.py``), used to detect a Python application.
    models: a model folder (its name is the model's) or a folder of model folders, as ``-m`` of the packager.
    platform_config: ``dgpu`` or ``cpu``; a CPU package asks for no GPU in its resources.
    """
    if platform_config not in ("dgpu", "cpu"):
        raise ValueError(f"platform_config must be 'dgpu' or 'cpu', given {platform_config!r}")
    config = read_config(config_path)
    params = PackageBuildParameters()
    params.application = Path(app)
    params.models = _models(Path(models))
    app_json = config.populate_app_manifest(params)
    app_json.command = json.dumps(ENTRYPOINT)  # the packager's format: a JSON list as a string
    app_json.sdk = SdkType.MonaiDeploy.value
    app_json.sdk_version = metadata.version("monai-deploy-app-sdk")
    pkg_json = config.populate_package_manifest(params)
    pkg_json.platform_config = platform_config
    if platform_config == "cpu":
        pkg_json.resources = {k: v for k, v in pkg_json.resources.items() if k not in ("gpu", "gpuMemory")}
    return _plain(app_json.data), _plain(pkg_json.data)


def _models(path: Path) -> dict[str, Path]:
    """Model name -> path, by the packager's own rules for ``-m`` (a folder of files is one model named
    after the folder); a path not there yet (weights not trained) still names its model."""
    return Models().build(path) or {path.name: path}


def _plain(data: dict) -> dict:
    return json.loads(json.dumps(data, default=str))


def write_manifests(out: Path, **kwargs) -> tuple[Path, Path]:
    """Write ``out/app.json`` and ``out/pkg.json``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "app.json", out / "pkg.json"
    for path, data in zip(paths, manifests(**kwargs)):
        path.write_text(json.dumps(data, indent=2) + "\n")
    return paths


def stage_app(dest: Path, repo: Path = REPO) -> Path:
    """A self-contained application folder for ``monai-deploy package``: app/'s files with operators/,
    dynamic_pet/, the models package's code (no weights) and requirements.txt beside them."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(repo / "app", dest, ignore=ignore)
    for package in PACKAGES:
        shutil.copytree(repo / package, dest / package, ignore=ignore)
    (dest / "models").mkdir()
    for source in (repo / "models").glob("*.py"):
        shutil.copy2(source, dest / "models" / source.name)
    shutil.copy2(repo / "requirements.txt", dest / "requirements.txt")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "app.yaml")
    ap.add_argument("--out", type=Path, help="folder for app.json and pkg.json")
    ap.add_argument("--app", type=Path, default=REPO / "app", help="application folder (with __main__.py)")
    ap.add_argument("--models", type=Path, default=REPO / "models" / "prior")
    ap.add_argument("--platform-config", choices=("dgpu", "cpu"), default="dgpu")
    ap.add_argument("--stage-app", type=Path, help="write a self-contained app folder for monai-deploy package")
    a = ap.parse_args(argv)
    if a.out is None and a.stage_app is None:
        ap.error("give --out and/or --stage-app")
    if a.out is not None:
        for path in write_manifests(a.out, config_path=a.config, app=a.app, models=a.models,
                                    platform_config=a.platform_config):
            print(path)
    if a.stage_app is not None:
        print(stage_app(a.stage_app))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
