"""What a user installs: a wheel with only the project's own namespace at the top level,
typed, whose ``ldrld check`` runs from the wheel alone (the reference inside it); and the
editable install of a clone, whose ``ldrld check`` finds the same reference in ``reference/``."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ["check", "--shape", "2x37x3", "--dtype", "float32", "--seed", "1"]


def _ldrld(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``ldrld ARGS`` of the environment ``bin_dir``, from ``cwd``, with no source tree on
    the path."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "TRITON_INTERPRET")}
    return subprocess.run([str(bin_dir / "ldrld"), *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("builds from the git checkout's tracked files")
    # build from a copy of the tracked files, so that nothing left in this checkout (a
    # build/ folder, an old egg-info) can slip into the wheel or mask a missing file
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         str(source)], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = tmp_path.glob("ldrld_kernels-*.whl")
    return built


def test_wheel_holds_only_the_project_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"ldrld_kernels"}
    assert "ldrld_kernels/py.typed" in names
    assert "ldrld_kernels/reference/__init__.py" in names
    packages = {str(path.parent.relative_to(ROOT)) for path in ROOT.glob("ldrld_kernels/**/*.py")}
    assert {f"{package}/__init__.py" for package in packages} <= set(names)  # every subpackage


def test_ldrld_check_from_the_wheel_in_a_fresh_venv(wheel, tmp_path):
    # a venv of its own with the wheel alone installed; torch, triton and numpy come from this
    # environment's site-packages (on the path after the venv's own, without its .pth files:
    # not the editable install of this checkout)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet",
                             str(wheel)], capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    purelib_of = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(python), "-c", purelib_of], capture_output=True, text=True,
                             check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(purelib, "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    reference_of = "import ldrld_kernels.reference as r; print(r.__file__)"
    where = subprocess.run([str(python), "-c", reference_of], cwd=tmp_path,
                           capture_output=True, text=True, check=False)
    assert where.stdout.strip().startswith(purelib), where.stdout + where.stderr
    result = _ldrld(venv / "bin", tmp_path, *CHECK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all passed" in result.stdout and "torch" in result.stdout


def test_ldrld_check_from_the_editable_install(tmp_path):
    import ldrld_kernels.reference

    if Path(ldrld_kernels.reference.__file__).resolve() != ROOT / "reference" / "__init__.py":
        pytest.skip("this environment has no editable install of the checkout")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "ldrld").exists():
        pytest.skip("no ldrld command in this environment")
    result = _ldrld(bin_dir, tmp_path, *CHECK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all passed" in result.stdout
