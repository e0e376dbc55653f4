"""MONAI Application Package: app.yaml, the manifests, the Dockerfile's layout, and a run from that layout.

No Docker engine here, so the image is not built: its COPY lines are replayed into a temporary root and the
app is started there as the ENTRYPOINT would start it, with only the HOLOSCAN_* folders set.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from holoscan_cli.common.exceptions import InvalidApplicationConfigurationError
from holoscan_cli.packager.config_reader import ApplicationConfiguration

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make_map_manifests.py"
BRIEF_OPTIONS = ("PATLAK_METHOD", "PATLAK_T_STAR", "PATLAK_INPUT_FUNCTION", "PATLAK_IDIF_MASK", "PATLAK_DEVICE",
                 "PATLAK_SAMPLES", "PATLAK_SEED", "PATLAK_SERIES_UID", "PATLAK_QUIET", "PATLAK_SEND_TO",
                 "PATLAK_REPORT")


def _script():
    spec = importlib.util.spec_from_file_location("make_map_manifests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _env() -> dict[str, str]:
    env = {}
    for instruction, args in _instructions():
        if instruction == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    return env


def _copies() -> list[tuple[str, str]]:
    out = []
    for instruction, args in _instructions():
        if instruction == "COPY":
            *sources, dest = [a for a in args.split() if not a.startswith("--")]
            out += [(source, dest) for source in sources]
    return out


def _ignored(relative: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(relative).parts
    return any(fnmatch.fnmatch(relative, p) or (p.startswith("**/") and any(fnmatch.fnmatch(x, p[3:])
                                                                             for x in parts))
               for p in patterns)


def _replay_copies(root: Path) -> None:
    """Do the Dockerfile's COPY lines into ``root`` (Docker's rules for a folder, a file and a glob)."""
    for source, dest in _copies():
        target = root / dest.lstrip("/")
        for path in sorted(glob.glob(str(REPO / source))):
            path = Path(path)
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if _ignored(relative):
                    continue
                if path.is_file():
                    to = target / file.name if dest.endswith("/") else target
                else:
                    to = target / file.relative_to(path)
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, to)


# ---------------------------------------------------------------- app.yaml


def test_app_yaml_passes_the_packagers_checks_with_kebab_case_formats():
    config = ApplicationConfiguration()
    config.read(REPO / "app.yaml")
    data = yaml.safe_load((REPO / "app.yaml").read_text())
    app = data["application"]
    assert config.title() == app["title"] and "research" in app["title"].lower()
    assert app["input-formats"] == ["file"] and app["output-formats"] == ["file"]
    assert not {"inputFormats", "outputFormats"} & set(app)  # camelCase is silently ignored by 4.2
    resources = data["resources"]
    assert {"cpu", "gpu", "memory", "gpuMemory", "sharedMemory"} <= set(resources)
    assert resources["cpu"] >= 1 and resources["gpu"] in (0, 1)
    for key in ("memory", "gpuMemory", "sharedMemory"):
        assert re.fullmatch(r"\d+(\.\d+)?(Mi|Gi)", str(resources[key])), (key, resources[key])


def test_app_yaml_version_matches_the_application():
    from app.app import PatlakApp
    from dynamic_pet import __version__

    version = str(yaml.safe_load((REPO / "app.yaml").read_text())["application"]["version"])
    assert version == PatlakApp.version == __version__


def test_app_yaml_documents_every_option_and_its_environment_variable():
    text = (REPO / "app.yaml").read_text()
    in_app = set(re.findall(r"PATLAK_[A-Z_]+", (REPO / "app" / "__main__.py").read_text()))
    for name in sorted(in_app | set(BRIEF_OPTIONS)):
        assert re.search(rf"^#.*\b{name}\b", text, re.M), f"{name} is not documented in app.yaml"
    for flag in re.findall(r'add_argument\("(--[a-z-]+)"', (REPO / "app" / "__main__.py").read_text()):
        assert flag == "--help" or flag in text, f"{flag} is not documented in app.yaml"


def test_packager_refuses_a_config_without_resources(tmp_path):
    broken = tmp_path / "app.yaml"
    data = yaml.safe_load((REPO / "app.yaml").read_text())
    del data["resources"]
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidApplicationConfigurationError, match="resources"):
        ApplicationConfiguration().read(broken)


# ---------------------------------------------------------------- manifests


def test_manifests_are_generated_valid_json_with_the_expected_keys(tmp_path):
    out = tmp_path / "holoscan"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, cwd=tmp_path,
                   capture_output=True)
    app = json.loads((out / "app.json").read_text())
    pkg = json.loads((out / "pkg.json").read_text())
    data = yaml.safe_load((REPO / "app.yaml").read_text())
    assert app["apiVersion"] == pkg["apiVersion"] == "1.0.0"
    assert json.loads(app["command"]) == ["python3", "-m", "app"]
    assert app["sdk"] == "monai-deploy" and app["sdkVersion"] == "4.0.0"
    assert app["version"] == pkg["version"] == str(data["application"]["version"])
    assert app["input"]["formats"] == ["file"] and app["output"]["formats"] == ["file"]
    assert app["workingDirectory"] == "/var/holoscan"
    assert pkg["applicationRoot"] == "/opt/holoscan/app" and pkg["modelRoot"] == "/opt/holoscan/models"
    assert pkg["models"] == {"prior": "/opt/holoscan/models/prior"}
    assert pkg["resources"] == data["resources"] and pkg["platformConfig"] == "dgpu"


def test_cpu_manifest_asks_for_no_gpu():
    _, pkg = _script().manifests(config_path=REPO / "app.yaml", platform_config="cpu")
    assert pkg["platformConfig"] == "cpu"
    assert "gpu" not in pkg["resources"] and "memory" in pkg["resources"]


def test_manifest_environment_agrees_with_the_dockerfile():
    app, _ = _script().manifests(config_path=REPO / "app.yaml")
    env = _env()
    for key, value in app["environment"].items():
        expected = value if value.startswith("/") else f"{app['workingDirectory']}/{value}"
        assert os.path.normpath(env.get(key, "")) == os.path.normpath(expected), key
    assert env["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input"
    assert env["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output"


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_copies_only_paths_that_exist():
    copies = _copies()
    assert copies
    missing = [source for source, _ in copies if not glob.glob(str(REPO / source))]
    assert not missing, f"Dockerfile COPY sources missing from the repository: {missing}"


def test_dockerfile_bases_user_torch_and_entrypoint():
    instructions = _instructions()
    text = (REPO / "Dockerfile").read_text()
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    assert any("python:3.11-slim" in text and "CPU_IMAGE" in f for f in froms)
    assert any("CUDA_IMAGE" in f for f in froms) and "nvidia/cuda:" in text
    assert froms[-1].startswith("base-${BASE}")
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    requirements_run = next(i for i, r in enumerate(runs) if "-r /tmp/requirements.txt" in r)
    assert torch_run < requirements_run
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    entrypoint = [args for instruction, args in instructions if instruction == "ENTRYPOINT"]
    assert json.loads(entrypoint[-1]) == ["python3", "-m", "app"]
    assert "ulimit" not in entrypoint[-1]
    assert "no Docker engine" in text  # the file says it was not built here


def test_app_runs_from_the_image_layout_with_only_holoscan_variables(phantom_demo_study, tmp_path):
    """The Dockerfile's COPY lines replayed into a fake root; the ENTRYPOINT run from its WORKDIR with its
    PYTHONPATH (mapped into the root) and the three HOLOSCAN_* folders: no -i/-o, no repository on the path."""
    root = tmp_path / "image"
    _replay_copies(root)
    app_dir = root / "opt" / "holoscan" / "app"
    assert (app_dir / "__main__.py").is_file() and (app_dir / "operators").is_dir()
    assert not list(app_dir.rglob("__pycache__"))
    python_path = ":".join(str(root / p.lstrip("/")) for p in _env()["PYTHONPATH"].split(":"))
    workdir = root / "var" / "holoscan"
    workdir.mkdir(parents=True, exist_ok=True)
    before = sorted(workdir.rglob("*"))
    output = tmp_path / "output"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": python_path,
           "HOLOSCAN_INPUT_PATH": str(phantom_demo_study / "dicom"), "HOLOSCAN_OUTPUT_PATH": str(output),
           "HOLOSCAN_MODEL_PATH": str(root / "opt" / "holoscan" / "models")}
    done = subprocess.run([sys.executable, "-m", "app", "--quiet"], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["method"] == "hqs" and summary["research_use_only"] is True  # the default, prior from -m
    assert len(list((output / "dicom").rglob("*.dcm"))) > 4
    assert sorted(workdir.rglob("*")) == before  # nothing written into the working directory


def test_staged_app_folder_for_the_packager_starts_on_its_own(tmp_path):
    """``--stage-app`` gives the folder ``monai-deploy package`` copies to /opt/holoscan/app; started as the
    packager's command (python3 /opt/holoscan/app) on an empty input it loads every operator and refuses
    the input with exit code 2."""
    staged = tmp_path / "opt" / "holoscan" / "app"
    subprocess.run([sys.executable, str(SCRIPT), "--stage-app", str(staged)], check=True, capture_output=True)
    assert (staged / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()
    assert (staged / "dynamic_pet" / "report.py").is_file() and (staged / "models" / "score_network.py").is_file()
    empty = tmp_path / "input"
    empty.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "HOLOSCAN_INPUT_PATH": str(empty), "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "output")}
    done = subprocess.run([sys.executable, str(staged), "--quiet"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "ModuleNotFoundError" not in done.stderr
