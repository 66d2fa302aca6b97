"""Every command the README shows runs, with tiny settings, in a scratch project directory.

Commands are read from the README generically: each line of a ```bash block (a trailing ``\\``
continues it), each ``$ command`` line of another block (the lines after it are its expected
output), and each inline code span that starts like a command (``python -m``, ``make``,
``cnnlab-``, ``.venv/bin/``, ``scripts/``, ``tensorboard``, ``mlflow``, ``pip``). ``RULES`` below
says how each kind runs; a command that no rule covers fails the test, naming the command, so a
new README command needs a rule here (most need none: ``python -m cnnlab.<tool> ...`` and
``make <target>`` are covered generally).

Tiny settings: training commands get ``TINY`` appended (one epoch of two batches; Optuna gets
two trials; a sweep preset over experiments, two of them); datasets are small generated files
in each source's format (``tests/datafiles``);
``<date>/<time>`` and the README's example dates become the latest run or sweep made here.
Documented mappings for commands that must not run as written: ``make test`` / ``pytest``
collect the suite instead of running it again (the suite is what runs them); ``make clean``
and ``make format`` run as dry runs / checks (they change the checkout); ``pip install`` of an
extra checks that pyproject declares it, and ``pip install .`` runs in tests/test_packaging.py
(into a ``--target`` directory, not over this venv); ``tensorboard`` / ``mlflow ui`` start and
are stopped once they serve; GPU-only commands (``--device cuda``) are skipped without a GPU.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from cnnlab.config import CONFIG_DIR
from datafiles import write_celeba, write_cifar10, write_image_folder
from forkrun import run_module

from conftest import ROOT, readme_block, slurm_script

README = ROOT / "README.md"
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.batch_size=16",  # unless the command sets it (cifar10_fast's 1024 costs seconds)
    "torch_threads=1",
    "print_config=false",
]
COMMAND_START = re.compile(
    r"^(python3? |\.venv/bin/|make |cnnlab-|scripts/|tensorboard |mlflow |pip |[A-Z_]+=\S+ )"
)
VENV_BIN = Path(sys.executable).parent


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` in README order, each command once."""
    found: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)", lines[i])
        if not fence:
            for span in re.findall(r"`([^`]+)`", _inline_text(lines, i)):
                span = " ".join(span.split())
                if COMMAND_START.match(span) and " " in span:
                    found.append((span, []))
            i += 1 + _inline_extra_lines(lines, i)
            continue
        block: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            block.append(lines[i])
            i += 1
        i += 1
        found += _block_commands(block, shell=fence.group(1) in ("bash", "sh", "shell"))
    unique: dict[str, list[str]] = {}
    for command, expected in found:
        unique.setdefault(command, expected)
    return list(unique.items())


def _inline_text(lines: list[str], i: int) -> str:
    # an inline code span may wrap onto the next line of the paragraph
    return lines[i] + (" " + lines[i + 1] if _inline_extra_lines(lines, i) else "")


def _inline_extra_lines(lines: list[str], i: int) -> int:
    odd = lines[i].count("`") % 2 == 1 and not lines[i].startswith("```")
    return 1 if odd and i + 1 < len(lines) and not lines[i + 1].startswith("```") else 0


def _block_commands(block: list[str], shell: bool) -> list[tuple[str, list[str]]]:
    commands: list[tuple[str, list[str]]] = []
    joined: list[str] = []
    for line in block:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + line.strip()
        else:
            joined.append(line)
    for n, line in enumerate(joined):
        if line.startswith("$ "):
            expected = []
            for out in joined[n + 1 :]:
                if not out.strip() or out.startswith("$ "):
                    break
                expected.append(out.strip())
            commands.append((line[2:].strip(), expected))
        elif shell and line.strip() and not line.lstrip().startswith("#"):
            commands.append((re.split(r"\s+#\s", line.strip())[0].strip(), []))
    return commands


COMMANDS = readme_commands(README.read_text())


# ---- the scratch project: data, environment, placeholders -------------------------------------


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A working directory outside the repository, generated datasets, and the environment."""
    cwd = tmp_path_factory.mktemp("project")
    data = cwd / "data"
    cifar = write_cifar10(data, per_batch=210, test=20)  # cifar10_fast: one batch of 1024
    write_image_folder(cwd / "images", classes=("cat", "dog"), per_class=6, size=(32, 32))
    walkthrough = _walkthrough(cwd, data)
    shim = cwd / "shim"
    # Subprocesses accept the generated files' MD5s as tests/datafiles does in-process.
    with (shim / "sitecustomize.py").open("a") as site:
        site.write(
            "import json, os\n"
            "if os.environ.get('CNNLAB_TEST_CIFAR_MD5'):\n"
            "    from torchvision.datasets import CIFAR10\n"
            "    md5 = json.loads(os.environ['CNNLAB_TEST_CIFAR_MD5'])\n"
            "    CIFAR10.train_list = [[n, md5[n]] for n, _ in CIFAR10.train_list]\n"
            "    CIFAR10.test_list = [[n, md5[n]] for n, _ in CIFAR10.test_list]\n"
            "    CIFAR10.meta = {**CIFAR10.meta, 'md5': md5['batches.meta']}\n"
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT / "src")]),
        "CNNLAB_DATA": str(data),
        "CNNLAB_TEST_CIFAR_MD5": json.dumps(cifar["md5"]),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    }
    env.pop("CNNLAB_OUTPUTS", None)
    return {"cwd": cwd, "env": env, "images": cwd / "images", "walkthrough": walkthrough}


# The README's "Extending cnnlab" walkthrough adds these presets; its commands run with them.
WALKTHROUGH = {
    "model/tiny_vgg.yaml": "conf/model/tiny_vgg.yaml`",
    "experiment/gdl_cnn_seeds.yaml": "`conf/experiment/gdl_cnn_seeds.yaml`:",
    "data/flowers.yaml": "example `conf/data/flowers.yaml`",
}
WALKTHROUGH_NAMES = re.compile(r"\b(tiny_vgg|gdl_cnn_seeds|data=flowers)\b")


def _walkthrough(cwd: Path, data: Path) -> Path:
    """The walkthrough's files as a user who followed it has them: the presets in a config
    directory (given as ``CNNLAB_CONFIG_DIR``), the model file importable as
    ``cnnlab.models.tiny_vgg`` (through ``shim/sitecustomize.py``), and a flowers folder."""
    conf = cwd / "walkthrough"
    for name, after in WALKTHROUGH.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(readme_block(after, "yaml"))
    (cwd / "shim").mkdir()
    model = cwd / "shim" / "tiny_vgg.py"
    model.write_text(readme_block("`src/cnnlab/models/tiny_vgg.py`:", "python"))
    (cwd / "shim" / "sitecustomize.py").write_text(
        "import importlib.abc, importlib.util, sys\n"
        "class _Walkthrough(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cnnlab.models.tiny_vgg':\n"
        f"            return importlib.util.spec_from_file_location(name, {str(model)!r})\n"
        "sys.meta_path.insert(0, _Walkthrough())\n"
    )
    write_image_folder(data / "flowers", classes=("daisy", "rose", "tulip"), per_class=4)
    return conf


def _latest(project: dict, kind: str) -> Path:
    """The newest completed run (``runs``) or sweep (``multiruns``), made now if none exists."""
    found = sorted((project["cwd"] / "outputs" / kind).glob("*/*"))
    if kind == "runs":
        found = [p for p in found if (p / "checkpoints" / "best.ckpt").is_file()]
    else:  # a sweep whose jobs all completed (not a detached or failed one)
        found = [p for p in found if _completed(p / "multirun.yaml", p.glob("*/metrics.json"))]
    if not found:
        extra = ["-m", "optimizer.lr=0.01,0.003"] if kind == "multiruns" else []
        _run([sys.executable, "-m", "cnnlab.train", *extra, *TINY], project)
        return _latest(project, kind)
    return found[-1]


def _completed(marker: Path, metrics: Iterable[Path]) -> bool:
    statuses = [json.loads(m.read_text()).get("status") for m in metrics]
    return marker.is_file() and bool(statuses) and set(statuses) == {"completed"}


def _reproduction(project: dict) -> Path:
    """``outputs/reproduce`` of the scratch project, reproduced now if missing."""
    out = project["cwd"] / "outputs" / "reproduce"
    if not out.is_dir():
        _run([sys.executable, "-m", "cnnlab.reproduce", str(_datasets(project)), *TINY], project)
    return out


def _records(project: dict) -> Path:
    """``docs/runs`` of the scratch project: the tiny reproduction's records, kept now if
    missing (the README's command that keeps them, which then is not run twice: ``_run``)."""
    out = _reproduction(project)
    records = project["cwd"] / "docs" / "runs"
    if not records.is_dir():
        argv = ["--paper", str(out.relative_to(project["cwd"])), "--records", "docs/runs"]
        _run([sys.executable, "-m", "cnnlab.report", *argv], project)
    return records


def _datasets(project: dict) -> Path:
    """A datasets folder with CelebA alone (a partial copy, as on the project's machine): a
    reproduction runs its one row and skips the others, each with a line."""
    data = project["cwd"] / "datasets"
    if not data.is_dir():
        write_celeba(data, partitions=None, layout="partial", scale=0.5)
    return data


def _substitute(command: str, project: dict) -> str:
    """The README's placeholders and example paths, as they exist in the scratch project."""
    command = re.sub(r"\s\[[^\]]+\]", "", command)  # [optional arguments]
    command = re.sub(
        r"outputs/(runs|multiruns)/(?:<date>|\d{4}-\d\d-\d\d)/(?:<time>|[\d-]+)",
        lambda m: str(_latest(project, m.group(1))),
        command,
    )
    command = command.replace("<image folder>", str(project["images"]))
    if re.search(r"outputs/reproduce\b", command):
        _reproduction(project)
    if re.search(r"\bdocs/runs\b", command):
        _records(project)
    if "../shared/data" in command:  # this machine's datasets: generated files instead
        command = command.replace("../shared/data", str(_datasets(project)))
    command = command.replace("<sweep dir>", str(_latest(project, "multiruns")))
    command = command.replace("data.root=DIR", f"data.root={project['images']}")
    command = command.replace(
        "paths.data_dir=DIR", f"paths.data_dir={project['env']['CNNLAB_DATA']}"
    )
    # a user's config directory: made here, holding the experiment the command names
    for where in re.findall(r"(?:--config-dir[ =]|CNNLAB_CONFIG_DIR=)(\S+)", command):
        for name in re.findall(r"experiment=(\w+)", command):
            path = project["cwd"] / where / "experiment" / f"{name}.yaml"
            if not (ROOT / "conf" / "experiment" / f"{name}.yaml").exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("# @package _global_\ndefaults:\n  - override /model: mlp\n")
    return command


_RAN: dict[tuple, subprocess.CompletedProcess] = {}


def _run(argv: list[str], project: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    """``argv`` in the scratch project; a command that resolves to exactly what an earlier one
    ran (``make bench`` and the script it runs, say) is not run twice in one worker."""
    key = (tuple(argv), str(project["cwd"]), tuple(sorted(project["env"].items())))
    if key not in _RAN:
        _RAN[key] = _run_now(argv, project, timeout)
    return _RAN[key]


def _run_now(argv: list[str], project: dict, timeout: int) -> subprocess.CompletedProcess:
    # forked after the imports (tests/forkrun.py): python -m <module>, python <script>.py, -c
    if argv[:2] == [sys.executable, "-m"]:
        return run_module(argv[2], argv[3:], project["cwd"], project["env"], timeout)
    if argv[0] == sys.executable and argv[1:2] and (argv[1].endswith(".py") or argv[1] == "-c"):
        return run_module(argv[1], argv[2:], project["cwd"], project["env"], timeout)
    return subprocess.run(
        argv,
        cwd=project["cwd"],
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# ---- how each kind of command runs ------------------------------------------------------------


def _python_module(module: str, args: list[str], project: dict) -> subprocess.CompletedProcess:
    if module == "cnnlab.train" and any(a.startswith("hparams_search=optuna") for a in args):
        pytest.importorskip("optuna", reason="the optuna extra is not installed")
        args = [a for a in args if not a.startswith("hydra.sweeper.n_trials=")]
        args += ["hydra.sweeper.n_trials=2"]
    informational = {"--help", "-h", "--cfg", "-c", "--info", "--dry-run"} & set(args)
    if module == "cnnlab.reproduce":  # its default data folder ($CNNLAB_DATA): CelebA alone
        project = {**project, "env": {**project["env"], "CNNLAB_DATA": str(_datasets(project))}}
    if module in ("cnnlab.train", "cnnlab.reproduce") and not informational:
        # cnnlab.reproduce passes them to each of its runs
        args += [t for t in TINY if not any(a.startswith(t.split("=")[0] + "=") for a in args)]
        args += _two_experiments(args)
    run = _run([sys.executable, "-m", module, *args], project)
    if "hydra.launcher.detach=true" in args and run.returncode == 0:
        _cancel_detached_jobs(run.stdout, project["cwd"])
    return run


def _two_experiments(args: list[str]) -> list[str]:
    """A sweep preset over experiments (the CIFAR-2 study) runs its first two here: the others
    run in tests/test_experiments.py, and each costs a job per seed."""
    for arg in args:
        if arg.startswith("sweep="):
            preset = yaml.safe_load((CONFIG_DIR / "sweep" / f"{arg[6:]}.yaml").read_text())
            rows = str(preset["hydra"]["sweeper"]["params"].get("experiment", "")).split(",")
            if len(rows) > 2:
                return [f"hydra.sweeper.params.experiment='{','.join(rows[:2])}'"]
    return []


def _cancel_detached_jobs(stdout: str, cwd: Path) -> None:
    """A detached Slurm sweep has been submitted and the command has returned: its jobs (cold
    interpreters, seconds of CPU each) are cancelled. tests/test_slurm_cluster.py follows a
    detached sweep to its end."""
    sweep = re.search(r"python -m cnnlab\.status (\S+)", stdout)
    assert sweep, stdout[-2000:]
    jobs = json.loads((cwd / sweep.group(1) / "jobs.json").read_text())["jobs"]
    subprocess.run(["scancel", *(job["job_id"] for job in jobs.values())], check=True)


# Benchmarks run their seconds-long test configuration (one round, one thread).
BENCH_TINY = {
    # one model, no peers: tests/test_bench.py runs the tiny benchmark with all of them
    "bench_throughput.py": [
        "--tiny",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--variants",
        "",
        "--models",
        "gdl_mlp",
        "--peers",
        "none",
    ],
    "bench_startup.py": ["--tiny", "--repeats", "1", "--sweep-repeats", "1"],
    "bench_recipe.py": ["--tiny", "--threads", "1"],
    # a whole study per launcher: its tiny run is tests/test_bench.py's; here its commands
    "bench_sweep.py": ["--tiny", "--dry-run"],
}


def _without(args: list[str], tiny: list[str]) -> list[str]:
    """``args`` less the options ``tiny`` sets (with their values): commands that differ only
    there resolve to one command, which runs once (``_run``)."""
    flags = ("--tiny", "--dry-run")
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("--") and arg in tiny:
            skip = arg not in flags
        else:
            kept.append(arg)
    return kept


def _script(path: str, args: list[str], project: dict) -> subprocess.CompletedProcess:
    name = Path(path).name
    if name in BENCH_TINY:
        if "cuda" in args:
            import torch

            if not torch.cuda.is_available():
                pytest.skip("a GPU command, and this machine has no GPU")
        args = _without(args, BENCH_TINY[name]) + BENCH_TINY[name]
        args += ["--workdir", str(project["cwd"] / "bench")]
    if name == "slurm_cluster.sh":  # `down` runs last of the cluster's tests (conftest.py)
        results = [slurm_script(a) for a in args if a in ("up", "down")]
        return subprocess.CompletedProcess(path, max(r.returncode for r in results),
                                           "".join(r.stdout for r in results),
                                           "".join(r.stderr for r in results))  # fmt: skip
    if not name.endswith(".py"):
        return _run([str(ROOT / path), *args], project)
    return _run([sys.executable, str(ROOT / path), *args], project)


def _server(argv: list[str], project: dict, url_pattern: str) -> subprocess.CompletedProcess:
    """Start a server command, check that it answers, stop it."""
    proc = subprocess.Popen(
        argv,
        cwd=project["cwd"],
        env=project["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            output.append(line)
            match = re.search(url_pattern, line)
            if match or time.monotonic() > deadline:
                break
        assert match, "".join(output)
        with urllib.request.urlopen(match.group(1), timeout=60) as page:
            assert page.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return subprocess.CompletedProcess(argv, 0, "".join(output), "")


def _outside_make() -> dict[str, str]:
    """The environment without what an outer ``make test ARGS=...`` passes to a nested make."""
    skip = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS")
    return {k: v for k, v in os.environ.items() if k not in skip}


def _make(args: list[str], project: dict) -> list[subprocess.CompletedProcess]:
    """``make <target>``: the recipe make would run (install step skipped), each line run here."""
    target = args[0] if args else "train"
    if target == "help":
        return [
            subprocess.run(
                ["make", "-s", "--no-print-directory", "help"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
        ]
    venv = VENV_BIN.parent
    dry = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "-o",
            f"{venv}/.installed",
            "-o",
            "browser",
            "-o",
            "slurm",
            *args,
            f"VENV={venv}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_outside_make(),
    )
    assert dry.returncode == 0, dry.stderr
    if target == "clean":  # deletes caches of the checkout: the dry run is the check
        return [dry]
    results = []
    for line in dry.stdout.splitlines():
        line = line.replace(f"{venv}/bin/", "")
        results += _execute(line, [], project)
    return results


def _execute(command: str, expected: list[str], project: dict) -> list:
    argv = shlex.split(_substitute(command, project))
    if WALKTHROUGH_NAMES.search(command):
        project = {
            **project,
            "env": {**project["env"], "CNNLAB_CONFIG_DIR": str(project["walkthrough"])},
        }
    while argv and re.match(r"^[A-Z_]+=", argv[0]):  # VAR=value command ...
        key, value = argv.pop(0).split("=", 1)
        project = {**project, "env": {**project["env"], key: value}}
    head, args = argv[0], argv[1:]
    name = Path(head).name
    if head == "make":
        return _make(args, project)
    if name in ("python", "python3") and args[:1] == ["-m"]:
        module, args = args[1], args[2:]
        if module == "pytest":
            return _pytest(args, project)
        if module == "pip":
            return _pip(args)
        return [_python_module(module, args, project)]
    if name in ("python", "python3") and args and args[0].endswith(".py"):
        return [_script(args[0], args[1:], project)]
    if head.startswith("scripts/"):
        return [_script(head, args, project)]
    if name.startswith("cnnlab-"):
        return [_python_module(_console_scripts()[name], args, project)]
    if name == "pytest":
        return _pytest(args, project)
    if name == "pip":
        return _pip(args)
    if name == "ruff":
        args = [a for a in args if a != "--fix"]
        if args[:1] == ["format"] and "--check" not in args:
            args = ["format", "--check", *args[1:]]
        return [_run([str(VENV_BIN / "ruff"), *args], {**project, "cwd": ROOT})]
    if name == "tensorboard":
        args = [*args, "--host", "127.0.0.1", "--port", "0"]
        return [_server([str(VENV_BIN / "tensorboard"), *args], project, r"(http://\S+:\d+/)")]
    if name == "mlflow":
        pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
        args = [*args, "--host", "127.0.0.1", "--port", "5987"]
        return [_server([str(VENV_BIN / "mlflow"), *args], project, r"(http://\S+:5987)")]
    pytest.fail(f"No rule in tests/test_readme.py runs the README command: {command}")


def _pytest(args: list[str], project: dict) -> list:
    """The suite runs these tests already: check that what the README names is collected."""
    tests = [a for a in args if "<" not in a and a != "-q"]
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    return [_run([*collect, *tests], {**project, "cwd": ROOT})]


def _pip(args: list[str]) -> list:
    """Installing an extra: pyproject.toml declares it. ``pip install .`` itself would replace
    this venv's editable install: tests/test_packaging.py runs it (with ``--target``) and
    trains with the result from another directory."""
    if args == ["install", "."]:
        assert '"pip", "install", ".",' in (ROOT / "tests" / "test_packaging.py").read_text()
        return []
    extras = set(
        re.findall(r"^([\w-]+) = \[", _pyproject_section("project.optional-dependencies"), re.M)
    )
    for arg in args:
        for extra in re.findall(r"\[([\w,-]+)\]", arg):
            assert set(extra.split(",")) <= extras, arg
    return []


def _console_scripts() -> dict[str, str]:
    section = _pyproject_section("project.scripts")
    return dict(re.findall(r'^([\w-]+) = "([\w.]+):\w+"', section, re.M))


def _pyproject_section(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return text.split(f"[{name}]\n", 1)[1].split("\n[", 1)[0]


# ---- the tests --------------------------------------------------------------------------------


def test_the_readme_shows_commands() -> None:
    commands = [c for c, _ in COMMANDS]
    assert "make train" in commands and "make test" in commands
    assert any(c.startswith("python -m cnnlab.train -m ") for c in commands)
    assert any(expected for _, expected in COMMANDS), "a $ command with its expected output"


def _python_snippets(text: str) -> list[str]:
    """The README's ```python blocks that use cnnlab as a library (not a file to save)."""
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    return [b for b in blocks if b.startswith("import") and "cnnlab." in b]


SNIPPETS = _python_snippets(README.read_text())


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_python_snippet_runs(snippet: str, project: dict) -> None:
    code = snippet.replace("outputs/runs/<date>/<time>", str(_latest(project, "runs")))
    run = _run([sys.executable, "-c", code], project)
    assert run.returncode == 0, f"{code}\n{run.stderr[-3000:]}"


# README commands that start, use or stop the test Slurm cluster share one xdist worker with
# tests/test_slurm_cluster.py (`--dist loadgroup`), so that none stops the cluster under another.
# The reproduction commands share one worker too: each continues the runs of the one before;
# and the benchmark commands, so that one that runs what another ran is not run twice (_run).
_GROUPS = {"slurm": "slurm", "reproduce": "reproduce", "docs/runs": "reproduce", "bench": "bench"}
_CASES = [
    pytest.param(
        c, e, id=c, marks=[pytest.mark.xdist_group(g) for w, g in _GROUPS.items() if w in c]
    )
    for c, e in COMMANDS
]


@pytest.mark.parametrize(("command", "expected"), _CASES)
def test_readme_command_runs(
    command: str, expected: list[str], project: dict, request: pytest.FixtureRequest
) -> None:
    if "slurm" in command:
        request.getfixturevalue("slurm_cluster")
    outputs = project["cwd"] / "outputs"
    before = set(outputs.glob("**/metrics.json"))
    results = _execute(command, expected, project)
    output = "".join(r.stdout + r.stderr for r in results)
    errors = [e for e in expected if e.startswith("cnnlab: error")]
    if errors:  # the README shows this command failing on bad input
        assert [r.returncode for r in results] == [2], output[-3000:]
    else:
        assert all(r.returncode == 0 for r in results), f"{command}\n{output[-4000:]}"
        for metrics in set(outputs.glob("**/metrics.json")) - before:
            status = json.loads(metrics.read_text()).get("status")
            assert status == "completed", f"{metrics}: {status}"
    for line in expected:
        assert line in output, output[-3000:]
