"""The build backend of the msa-mem Python bindings (PEP 517, in-tree).

The bindings are one pure-Python package over ctypes, so a wheel is just a
zip of msa_mem/ with its metadata. Writing it here with the standard library
means `pip install ./bindings/python` needs nothing from an index (no
setuptools download, works offline and in a fresh virtual environment, with
or without build isolation), and gives one place to do the only thing that
needs doing at install time: record where the C library was built.

That record is msa_mem/_locations.py in the wheel, BUILD_DIRS = [...]:
$MSA_BUILD_DIR when it is set at install time (only that), else the build/
and build-cpu/ folders of the checkout being installed from. The package
tries these before an installed libmsa (msa_mem.load_library()), so a
package installed from a checkout keeps using that checkout's build, also
after rebuilds, and one installed elsewhere finds `cmake --install`'s copy.
No library is copied into the wheel: it would go stale on the next build and
make a platform wheel of a pure-Python one.

Hooks: build_wheel, build_sdist, build_editable (PEP 660: a .pth file that
puts this folder on sys.path) and their get_requires_* (none).
"""

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent   # bindings/python
PACKAGE = "msa_mem"


def _project() -> dict:
    """name, version, description, requires-python from pyproject.toml's
    [project] table (tomllib where present, else its simple key = "value"
    lines, which is all that table holds)."""
    text = (HERE / "pyproject.toml").read_text()
    try:
        import tomllib
        return tomllib.loads(text)["project"]
    except ImportError:
        pass
    table = re.search(r"(?ms)^\[project\]\s*$(.*?)(?=^\[|\Z)", text).group(1)
    return dict(re.findall(r'(?m)^([\w-]+)\s*=\s*"([^"]*)"', table))


def _dist_name(p: dict) -> str:
    return re.sub(r"[-_.]+", "_", p["name"]).lower()


def _metadata(p: dict) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {p['version']}",
             f"Summary: {p.get('description', '')}"]
    if p.get("requires-python"):
        lines.append(f"Requires-Python: {p['requires-python']}")
    readme = HERE / "README.md"
    if readme.exists():
        lines.append("Description-Content-Type: text/markdown")
        return "\n".join(lines) + "\n\n" + readme.read_text()
    return "\n".join(lines) + "\n"


def _build_dirs() -> list:
    env = os.environ.get("MSA_BUILD_DIR")
    if env:
        return [str(Path(env).resolve())]
    root = HERE.parent.parent
    if not (root / "engine" / "msa.h").exists():
        return []
    return [str(root / b) for b in ("build", "build-cpu")]


def _locations_py() -> str:
    return ('"""Written by the build backend at pip-install time: the build trees\n'
            'of libmsa that msa_mem.load_library() tries first."""\n\n'
            f"BUILD_DIRS = {_build_dirs()!r}\n")


class _Wheel:
    """A wheel being written: files plus the RECORD of their hashes."""

    def __init__(self, path: Path, dist_info: str):
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
        self.dist_info = dist_info
        self.record = []

    def add(self, name: str, data: bytes) -> None:
        self.zip.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        self.record.append(f"{name},sha256={digest.decode()},{len(data)}")

    def close(self, p: dict, tag: str = "py3-none-any") -> None:
        self.add(f"{self.dist_info}/METADATA", _metadata(p).encode())
        self.add(f"{self.dist_info}/WHEEL", (
            "Wheel-Version: 1.0\nGenerator: msa_build_backend\nRoot-Is-Purelib: true\n"
            f"Tag: {tag}\n").encode())
        self.add(f"{self.dist_info}/top_level.txt", f"{PACKAGE}\n".encode())
        name = f"{self.dist_info}/RECORD"
        self.record.append(f"{name},,")
        self.zip.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)),
                          "\n".join(self.record) + "\n")
        self.zip.close()


def _package_files():
    for f in sorted((HERE / PACKAGE).rglob("*.py")):
        if f.name != "_locations.py" and "__pycache__" not in f.parts:
            yield f


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    p = _project()
    dist = _dist_name(p)
    fname = f"{dist}-{p['version']}-py3-none-any.whl"
    w = _Wheel(Path(wheel_directory) / fname, f"{dist}-{p['version']}.dist-info")
    for f in _package_files():
        w.add(f.relative_to(HERE).as_posix(), f.read_bytes())
    w.add(f"{PACKAGE}/_locations.py", _locations_py().encode())
    w.close(p)
    return fname


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    p = _project()
    dist = _dist_name(p)
    fname = f"{dist}-{p['version']}-0.editable-py3-none-any.whl"
    w = _Wheel(Path(wheel_directory) / fname, f"{dist}-{p['version']}.dist-info")
    w.add(f"__editable__.{dist}.pth", (str(HERE) + "\n").encode())
    w.close(p)
    return fname


def build_sdist(sdist_directory, config_settings=None):
    p = _project()
    base = f"{_dist_name(p)}-{p['version']}"
    fname = f"{base}.tar.gz"
    files = [HERE / "pyproject.toml", HERE / "README.md", Path(__file__).resolve()]
    files += list(_package_files())
    with tarfile.open(Path(sdist_directory) / fname, "w:gz") as tar:
        for f in files:
            if f.exists():
                tar.add(f, arcname=f"{base}/{f.relative_to(HERE).as_posix()}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata(p).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return fname
