"""``pip install .`` is a working install: it ships every module and config, trains from any
directory, and reads a user's own config directory (--config-dir; CNNLAB_CONFIG_DIR, the same
mechanism, is tested on the checkout in tests/test_config.py)."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "torch_threads=1",
    "print_config=false",
]


# One worker installs the package once for the module's tests (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("packaging")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's ``pip install .``, run in a copy of the project's sources (no build files
    left in the checkout) with ``--target`` (so this venv keeps its editable install; torch
    etc. come from it). pip builds a wheel and installs it, as for a user."""
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    # a checkout of its own, so that the wheel's version names a known commit
    author = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for git in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "sources"]):
        subprocess.run(["git", *git], cwd=src, check=True, env={**os.environ, **author})
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", ".", "--no-deps", "--no-build-isolation",
         "-q", "--target", str(target)],
        cwd=src, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True)
    (target / "built_from").write_text(head.stdout.strip())
    return target


def _package_files() -> list[Path]:
    """The files of both packages under src/, as git tracks them (an unpacked archive: all)."""
    tops = ("src/cnnlab", "src/hydra_plugins")
    listed = subprocess.run(["git", "ls-files", *tops], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        return [ROOT / line for line in listed.stdout.splitlines()]
    files = [p for top in tops for p in (ROOT / top).rglob("*") if p.is_file()]
    return [p for p in files if "__pycache__" not in p.parts]


def test_the_install_holds_every_module_and_config(installed: Path) -> None:
    names = {str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file()}
    # every module and bundled data file (the digits) of both packages
    modules = {str(p.relative_to(ROOT / "src")) for p in _package_files()}
    configs = {f"cnnlab/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*")}
    configs = {c for c in configs if c.endswith(".yaml")}
    assert modules - names == set()
    assert configs - names == set()
    assert "cnnlab/conf/train.yaml" in names and "bin/cnnlab-train" in names


def test_package_data_names_every_bundled_file() -> None:
    """In a git checkout setuptools-scm puts every tracked file into the wheel, so the install
    above holds the data files either way; built from an unpacked archive, a wheel holds only
    what [tool.setuptools.package-data] names."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]
    data = [p for p in _package_files() if p.suffix != ".py"]
    assert data, "the digits at least"
    for path in data:
        package = ".".join(path.parent.relative_to(ROOT / "src").parts)
        assert any(fnmatch.fnmatch(path.name, p) for p in patterns.get(package, [])), path


def _cnnlab(installed: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The installed ``cnnlab-train`` script, with only the install on the import path."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CNNLAB_DATA")}
    environment.update(PYTHONPATH=str(installed), PYTHONNOUSERSITE="1", **env)
    script = installed / "bin" / "cnnlab-train"
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_install_trains_from_another_directory_with_a_user_config_dir(
    installed: Path, tmp_path: Path
) -> None:
    # a user's own experiment, in a config directory outside the package (--config-dir)
    mine = tmp_path / "myconf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "tiny_mlp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mlp\ntags: [mine]\n"
    )
    result = _cnnlab(installed, tmp_path, "--config-dir", str(mine), "experiment=tiny_mlp", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    assert "tiny_mlp" in (run / ".hydra" / "overrides.yaml").read_text()
    assert "cnnlab.models.mlp.MLP" in (run / ".hydra" / "config.yaml").read_text()
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.json", "environment.json", "checkpoints/best.ckpt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name
    # the code and the configs came from the install, not from this checkout; outside any
    # checkout, the commit comes from the version the wheel was built with
    env = json.loads((run / "environment.json").read_text())
    assert env["cnnlab_dir"] == str(installed / "cnnlab")
    assert env["config_dir"] == str(installed / "cnnlab" / "conf")
    built_from = (installed / "built_from").read_text()
    assert env["git_commit"] and built_from.startswith(env["git_commit"]), env
    assert f"+g{env['git_commit']}" in env["cnnlab"]

    # --help lists the packaged experiments and the user's
    help_text = _cnnlab(installed, tmp_path, "--config-dir", str(mine), "--help")
    assert help_text.returncode == 0 and "experiment: " in help_text.stdout
    assert "tiny_mlp" in help_text.stdout and "gdl_cnn" in help_text.stdout


def test_output_files_get_the_umask_permissions(tmp_path: Path) -> None:
    from cnnlab.rundir import write_json_atomic

    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            path = tmp_path / f"{umask:o}.json"
            write_json_atomic(path, {"a": 1})
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_copy_of_the_code_outside_its_checkout_names_no_commit(tmp_path: Path) -> None:
    """A plain copy, or one inside another project's git repository (a vendored copy, a venv in
    the project), is not the checkout this environment installed: neither its commit nor its
    version may be recorded."""
    project = tmp_path / "their_project"
    copy = project / "vendor"
    # the sources as a user copies them (no build metadata of this checkout)
    shutil.copytree(
        ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copytree(ROOT / "conf", copy / "conf")
    probe = "import json, cnnlab.provenance as p; print(json.dumps(p.provenance()))"
    author = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
              "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for repo in (False, True):
        if repo:  # their project, with a commit of its own
            (project / "README").write_text("theirs\n")
            for git in (["init", "-q"], ["add", "README"], ["commit", "-qm", "theirs"]):
                subprocess.run(["git", *git], cwd=project, check=True, env={**os.environ, **author})
        result = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(copy / "src")},
            capture_output=True,
            text=True,
            check=True,
        )
        recorded = json.loads(result.stdout)
        assert recorded["cnnlab_dir"] == str(copy / "src" / "cnnlab"), recorded
        assert recorded["git_commit"] is None and recorded["cnnlab"] is None, (repo, recorded)
