"""The package boundaries, checked on the source (AST, not grep), and the fast front door.

- ``trainer/`` is plain PyTorch: it imports no ``orchestrator``, ``search_spaces``, ``ray``,
  ``optuna`` or ``mlflow``, and only ``trainer/distributed.py`` touches ``torch.distributed`` or
  DDP's wrapper (``torch.nn.parallel``).
- ``search_spaces/`` imports no ``orchestrator``.
- No module imports a private name (``_x``) of another first-party package, neither as
  ``from pkg.mod import _x`` nor ``import pkg._mod`` nor ``mod._x`` on an imported module.
- Test modules import no other test module (shared helpers live in ``tests/helpers.py``).
- ``orchestrator/`` is layered, each role a package (:data:`ORCHESTRATOR_LAYERS`): a module imports
  only its own layer or those below it, so the commands sit above the engine they call, the
  engine above Tune, Tune above the Ray Train glue, and MLflow tracking and the reports at the
  bottom. Tracking and the reports (and the base modules) import no Ray. No module imports a
  command module: only ``orchestrator.cli`` dispatches to them (``commands.options``, the
  shared argument helpers, is not a command).
- No import circle among first-party modules, imports inside functions included.
- The trainer imports with Ray, Optuna and MLflow absent, and the CLI's front door (``--help``,
  argument and config errors) imports none of torch, transformers, Ray, MLflow or Optuna.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import trainer

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "orchestrator", "search_spaces", "tests", "bench")
TRAINER_FORBIDDEN = ("orchestrator", "search_spaces", "ray", "optuna", "mlflow")
COLLECTIVES = ("torch.distributed", "torch.nn.parallel")
COLLECTIVES_OWNER = "trainer.distributed"
HEAVY = ("torch", "transformers", "ray", "mlflow", "optuna")
# The orchestrator's roles, bottom up; a module may import its own layer and those below.
ORCHESTRATOR_LAYERS = (
    (
        "orchestrator.settings",
        "orchestrator.objective",
        "orchestrator.storage",
        "orchestrator.mlflow_server",
    ),
    ("orchestrator.tracking",),
    ("orchestrator.reports",),
    ("orchestrator.train",),
    ("orchestrator.tune",),
    ("orchestrator.engine",),
    ("orchestrator.commands",),
    ("orchestrator.cli",),
)
RAY_FREE = ("orchestrator.tracking", "orchestrator.reports", *ORCHESTRATOR_LAYERS[0])
COMMANDS, COMMAND_HELPERS, DISPATCHER = (
    "orchestrator.commands",
    ("orchestrator.commands.options",),
    "orchestrator.cli",
)


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(tree: ast.Module, module: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import; relative imports are
    resolved against ``module``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, base, alias.name


def _bound_modules(tree: ast.Module, module: str) -> dict[str, str]:
    """Local names bound to first-party modules (``import a.b as m``, ``from a import b``)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return {k: v for k, v in bound.items() if v.split(".")[0] in PACKAGES}


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(ORCHESTRATOR_LAYERS):
        if any(_within(module, p) for p in prefixes):
            return rank
    return None


def _orchestrator_rules(module: str, target: str, full: str) -> Iterator[str]:
    """The layer, Ray-free and command rules of one import inside ``orchestrator``."""
    mine, theirs = _layer(module), _layer(full) if _layer(full) is not None else _layer(target)
    if mine is not None and theirs is not None and theirs > mine:
        yield f"{module} imports {full}, a layer above it"
    if any(_within(module, p) for p in RAY_FREE) and target.split(".")[0] == "ray":
        yield f"{module} must not import Ray ({full})"
    command = next((m for m in (full, target) if _within(m, COMMANDS) and m != COMMANDS), None)
    if (
        command is not None
        and module != DISPATCHER
        and not any(_within(command, h) for h in COMMAND_HELPERS)
    ):
        yield f"only {DISPATCHER} may import a command module ({command})"


def _import_rules(module: str, line: int, target: str, name: str | None) -> Iterator[str]:
    top, full = module.split(".")[0], f"{target}.{name}" if name else target
    target_top = target.split(".")[0]
    if top in ("orchestrator", "bench"):
        yield from _orchestrator_rules(module, target, full)
    if top == "trainer" and target_top in TRAINER_FORBIDDEN:
        yield f"trainer imports {target_top} ({full})"
    if (
        top == "trainer"
        and module != COLLECTIVES_OWNER
        and any(_within(full, c) or _within(target, c) for c in COLLECTIVES)
    ):
        yield f"only {COLLECTIVES_OWNER} may import {full}"
    if top == "search_spaces" and target_top == "orchestrator":
        yield f"search_spaces imports orchestrator ({full})"
    if target_top in PACKAGES and target_top != top:
        private = [p for p in full.split(".") if _is_private(p)]
        if private:
            yield f"imports the private name {private[0]} of another package ({full})"
    tested = target.split(".")
    if top == "tests" and target_top == "tests" and any(p.startswith("test_") for p in tested):
        yield f"a test module imports another test module ({full})"


def _dotted(node: ast.AST) -> str | None:
    """``torch.nn.parallel`` for that attribute chain (outermost attribute only), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or not parts:
        return None
    return ".".join([node.id, *reversed(parts)])


def check_file(path: Path, root: Path) -> list[Violation]:
    """Every boundary rule broken by one source file."""
    module = _module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = str(path.relative_to(root))
    found = [
        Violation(rel, line, rule)
        for line, target, name in _imports(tree, module)
        for rule in _import_rules(module, line, target, name)
    ]
    bound = _bound_modules(tree, module)
    top = module.split(".")[0]
    for node in ast.walk(tree):
        dotted = _dotted(node)
        owner = top != "trainer" or module == COLLECTIVES_OWNER
        if dotted and not owner and any(_within(dotted, c) for c in COLLECTIVES):
            found.append(Violation(rel, node.lineno, f"only {COLLECTIVES_OWNER} may use {dotted}"))
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _is_private(node.attr)
            and bound[node.value.id].split(".")[0] != top
        ):
            rule = f"uses the private name {node.attr} of {bound[node.value.id]}"
            found.append(Violation(rel, node.lineno, rule))
    return found


def check_tree(root: Path) -> list[Violation]:
    return [
        v
        for package in PACKAGES
        if (root / package).is_dir()
        for path in sorted((root / package).rglob("*.py"))
        for v in check_file(path, root)
    ]


def test_the_boundaries_hold() -> None:
    violations = check_tree(ROOT)
    assert not violations, "\n".join(map(str, violations))


FIRST_PARTY = ("trainer", "orchestrator", "search_spaces")


def import_graph(root: Path) -> dict[str, set[str]]:
    """First-party module -> the first-party modules it names in an import, at any depth of
    the file (imports inside functions too): ``from a.b import c`` names ``a.b.c`` when that
    is a module, else ``a.b``."""
    paths = {
        _module_name(path, root): path
        for package in FIRST_PARTY
        if (root / package).is_dir()
        for path in sorted((root / package).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        named = {
            f"{target}.{name}" if name and f"{target}.{name}" in paths else target
            for _, target, name in _imports(tree, module)
        }
        graph[module] = {m for m in named if m in paths and m != module}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle() -> None:
    circles = import_circles(import_graph(ROOT))
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_an_import_circle_is_caught(tmp_path: Path) -> None:
    """The negative control: ``best`` <-> ``best_config`` as they were, one import lazy."""
    (tmp_path / "orchestrator").mkdir()
    (tmp_path / "orchestrator" / "best.py").write_text(
        "def f():\n    from orchestrator.best_config import by_config\n", encoding="utf-8"
    )
    (tmp_path / "orchestrator" / "best_config.py").write_text(
        "from orchestrator.best import KEY_PARAMS\n", encoding="utf-8"
    )
    assert import_circles(import_graph(tmp_path)) == [
        ["orchestrator.best", "orchestrator.best_config"]
    ]


BAD_FILES = {
    "trainer/stage9.py": "from torch.nn.parallel import DistributedDataParallel\n",
    "trainer/tracking.py": "import mlflow\n",
    "trainer/gather.py": "import torch.distributed as dist\n",
    "trainer/alias.py": "from torch import distributed\n",
    "trainer/attr.py": "import torch\ntorch.distributed.barrier()\n",
    "search_spaces/extra.py": "from orchestrator.engine.sweep import run_sweep\n",
    "bench/peek.py": "from trainer.stage1 import _optimizer\n",
    "orchestrator/peek.py": "from trainer import stage1\nstage1._schedule(None, None, 1)\n",
    # The orchestrator's layers: a command above the engine, Ray-free reports and tracking,
    # no command module imported but by the dispatcher.
    "orchestrator/engine/up.py": "from orchestrator.commands.options import bad_input\n",
    "orchestrator/train/up.py": "from orchestrator.tune.tuner import GRID_KEY\n",
    "orchestrator/tune/up.py": "from orchestrator.engine.sweep import run_sweep\n",
    "orchestrator/tracking/up.py": "from orchestrator.reports.best import print_table\n",
    "orchestrator/reports/ray.py": "import ray\n",
    "orchestrator/tracking/ray.py": "from ray.train import report\n",
    "orchestrator/storage.py": "from orchestrator.train import trainer\n",
    "orchestrator/commands/peek.py": "from orchestrator.commands.sweep import add_parser\n",
    "orchestrator/reports/peek.py": "from orchestrator.commands import best\n",
    "bench/peek_cli.py": "import orchestrator.commands.confirm\n",
    "tests/test_reuse.py": "from tests.orchestrator.test_sweep import sweep_args\n",
}


@pytest.mark.parametrize("rel", sorted(BAD_FILES))
def test_a_bad_import_is_caught(tmp_path: Path, rel: str) -> None:
    """The negative control: each rule fails on a deliberately bad file."""
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BAD_FILES[rel], encoding="utf-8")
    violations = check_file(path, tmp_path)
    assert violations, f"{rel} passed the layering check"


def test_good_imports_pass(tmp_path: Path) -> None:
    ok = {
        "trainer/distributed.py": "import torch.distributed as torch_dist\n",
        "trainer/stage1.py": "from trainer import distributed\nfrom trainer.loss import _ok\n",
        "orchestrator/x.py": "from orchestrator.tracking.store import _q\nimport ray._private\n",
        "tests/trainer/test_x.py": "from tests.helpers import free_port\n",
    }
    for rel, text in ok.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert check_tree(tmp_path) == []


_BLOCK_AND_IMPORT = textwrap.dedent(
    """
    import importlib, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"ray", "optuna", "mlflow"}:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    for name in sys.argv[1:]:
        importlib.import_module(name)
    print("imported", len(sys.argv) - 1)
    """
)


@pytest.mark.slow
def test_trainer_imports_without_ray_optuna_mlflow() -> None:
    modules = [
        m.name
        for m in pkgutil.walk_packages(trainer.__path__, "trainer.")
        if not m.name.endswith("__main__")
    ]
    assert "trainer.data.corpora" in modules and "trainer.metrics" in modules
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_AND_IMPORT, *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"imported {len(modules)}" in proc.stdout


def _heavy_modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    return [m for m in HEAVY if m in loaded]


def test_the_front_door_imports_nothing_heavy() -> None:
    """--help, argument errors, config and search-space validation answer before torch,
    transformers or Ray are imported (they cost seconds)."""
    parse = "from orchestrator.cli import build_parser\nbuild_parser()"
    assert _heavy_modules_after(parse) == []
    validate = (
        "from trainer.config import load_config\n"
        "from search_spaces import load_space, shipped_spaces\n"
        "[load_space(p, load_config()) for p in shipped_spaces()]"
    )
    assert _heavy_modules_after(validate) == []


def test_a_config_typo_fails_before_heavy_imports() -> None:
    code = (
        "import sys\nfrom orchestrator.cli import main\n"
        "code = main(['trial', 'loss.temprature=0.1'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]\n"
        "print(code, heavy)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert "loss.temprature: unknown key" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "2 []"


def test_cli_help_lists_the_data_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "data", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0
    assert "synth" in proc.stdout and "check" in proc.stdout
