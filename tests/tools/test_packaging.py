"""The wheel an operator installs: what it ships, the extras it declares, and what `--version` says.

The wheel is built once per module from a copy of the project's packaging inputs (so a build never
races another in the working tree), with `pip wheel --no-deps`, as a user would build it. pip's build
isolation fetches setuptools and wheel from the configured indexes (the local ones here); about 10 s.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from zmqagents import __version__
from zmqagents.cli.version import protocol_versions

ROOT = Path(__file__).resolve().parents[2]
NAME = "zmqagents"
SHIPPED = {  # path in the repository -> path in the wheel
    **{f"protocols/{p.name}": f"zmqagents/_data/protocols/{p.name}"
       for p in sorted((ROOT / "protocols").iterdir()) if p.suffix in (".md", ".json")},
    "scripts/node.example.toml": "zmqagents/_data/node.example.toml",
    "scripts/zmqagents.service": "zmqagents/_data/zmqagents.service",
    # the admin dashboard (/ui) and `mesh graph --format html`: served from the package, never a CDN
    **{f"zmqagents/sidecar/ui/{p.name}": f"zmqagents/sidecar/ui/{p.name}"
       for p in sorted((ROOT / "zmqagents/sidecar/ui").iterdir())},
}
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
# Child processes run unmeasured by coverage (.ci/run measures the processes tests start): the installed
# copy lives in a temporary directory, whose files would be gone when coverage reports on them.
UNMEASURED = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("zmqagents", "protocols", "scripts"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)  # zmqagents/_data: symlinks
    subprocess.run(PIP + ["wheel", "--no-deps", "-q", "-w", str(tmp / "out"), str(src)],
                   check=True, timeout=90, capture_output=True, env=UNMEASURED)
    [built] = (tmp / "out").glob(f"{NAME}-*.whl")
    return built


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        [path] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(path).decode())


@pytest.mark.timeout(120)
def test_wheel_ships_specs_example_config_unit_and_license(wheel):
    assert len(SHIPPED) > 10  # the specs and their vectors were found
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for repo_path, wheel_path in SHIPPED.items():
            assert wheel_path in names, f"{repo_path} is not in the wheel"
            assert z.read(wheel_path) == (ROOT / repo_path).read_bytes(), f"{wheel_path} differs from {repo_path}"
        [license_path] = [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]
        license_text = z.read(license_path).decode()
    assert license_text == (ROOT / "LICENSE").read_text()
    assert _metadata(wheel)["License"] == "MIT" and license_text.startswith("MIT License")


@pytest.mark.timeout(120)
def test_wheel_declares_the_extras_users_type(wheel):
    meta = _metadata(wheel)
    assert meta["Version"] == __version__  # setup.cfg reads it from the package: one place
    assert {"mdns", "metrics", "fast", "plot", "mpi"} <= set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("zeroconf") and 'extra == "mdns"' in r for r in requires)
    assert any(r.startswith("prometheus-client") and 'extra == "metrics"' in r for r in requires)
    assert any(r.startswith("mpi4py") and 'extra == "mpi"' in r for r in requires)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("extras, warns", [("mdns,metrics", False), ("mdns,nosuchextra", True)])
def test_installing_with_extras_does_not_warn(wheel, extras, warns):
    """Resolved against what this venv has installed (--no-index: offline); the second case shows the
    check sees pip's warning when an extra is missing."""
    out = subprocess.run(PIP + ["install", "--dry-run", "--no-index", f"{wheel}[{extras}]"],
                         capture_output=True, text=True, timeout=60, env=UNMEASURED)
    assert out.returncode == 0, out.stderr
    assert ("does not provide the extra" in out.stderr) == warns, out.stderr


@pytest.mark.timeout(120)
def test_version_of_the_installed_wheel_names_protocols_and_a_true_data_dir(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(PIP + ["install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=60, capture_output=True, env=UNMEASURED)
    env = {**UNMEASURED, "PYTHONPATH": str(target)}  # ahead of the editable install of the working tree
    out = subprocess.run([sys.executable, "-m", "zmqagents.launch", "--version"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    assert out[0] == f"zmqagents, version {__version__}"
    wire = dict(item.rsplit(" ", 1) for item in out[1].removeprefix("wire protocols: ").split(", "))
    assert {name: int(v) for name, v in wire.items()} == protocol_versions()
    assert set(wire) <= {p.stem for p in (ROOT / "protocols").glob("*.md")}  # each names its spec file
    data = Path(out[2].rsplit(": ", 1)[1])
    assert data.is_relative_to(target) and not data.is_symlink()
    for wheel_path in SHIPPED.values():
        installed = target / wheel_path
        assert installed.is_file() and not installed.is_symlink(), wheel_path
    assert (data / "zmqagents.service").read_text().startswith("# zmqagents sidecar")
