"""Imports point one way: data -> store -> scores -> selection -> loaders -> loss -> train -> reproduce
-> commands (docs/design.md, "Layers"). Every import in every module of the package counts, at module
level or inside a function: what a lower layer needs from a higher one is passed in (a callback, an
argument), never imported. The test reads the source with ``ast``, so it imports nothing."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = ("data", "store", "scores", "selection", "loaders", "loss", "train", "reproduce", "commands")

# module (or package) -> layer; the longest matching prefix wins
PLACE = {
    "kdprune.data": "data",
    "kdprune.store": "store",
    "kdprune.scores": "scores",
    "kdprune.selection": "selection",
    "kdprune.loaders": "loaders",
    "kdprune.dropin": "loaders",     # with_ids, KeptIdSampler: the drop-in halves of a loader
    "kdprune.logits": "loaders",     # the teacher -> store step: a model run over a loader
    "kdprune.loss": "loss",
    "kdprune.kernels": "loss",
    "kdprune.train": "train",
    "kdprune.reproduce": "reproduce",
    "kdprune.pipeline": "reproduce",
    "kdprune.commands": "commands",
    "kdprune.cli": "commands",
    "kdprune.__main__": "commands",
}
# Leaves every layer may import; they import only each other.
BASE = ("kdprune", "kdprune.errors", "kdprune.atomic", "kdprune.report", "kdprune.registry",
        "kdprune.catalog", "kdprune.provenance", "kdprune.models", "kdprune._native", "kdprune._C")


def modules():
    """(module name, path) of every Python file of the package, kernels/ included."""
    for folder, package in (("kdprune", "kdprune"), ("kernels", "kdprune.kernels")):
        base = os.path.join(ROOT, folder)
        for dirpath, _, files in os.walk(base):
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
                    name = package if rel == "__init__" else f"{package}.{rel.removesuffix('.__init__')}"
                    yield name, os.path.join(dirpath, f)


def exports() -> dict:
    """The lazy public names of ``kdprune/__init__.py`` (name -> module), read from its ``_EXPORTS``."""
    tree = ast.parse(open(os.path.join(ROOT, "kdprune", "__init__.py")).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imported(name: str, path: str, lazy: dict):
    """(line, module) of every kdprune module that ``name`` imports; ``from kdprune import X`` is read
    through ``lazy`` when X is a lazy public name rather than a submodule."""
    is_package = path.endswith("__init__.py")
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(parts + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [module]
            if module == "kdprune":
                targets = [lazy.get(a.name, f"kdprune.{a.name}") for a in node.names]
        else:
            continue
        for target in targets:
            if target and target.split(".")[0] == "kdprune":
                yield node.lineno, target


def layer(module: str):
    """The layer of ``module``: an index into LAYERS, -1 for BASE, None for a module the table misses."""
    if module in BASE:
        return -1
    best = max((p for p in PLACE if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS.index(PLACE[best])


def test_every_module_has_a_layer():
    missing = [name for name, _ in modules() if layer(name) is None]
    assert not missing, f"place these modules in tests/test_layers.py's PLACE or BASE: {missing}"


def test_no_import_points_up():
    lazy = exports()
    wrong = []
    for name, path in modules():
        mine = layer(name)
        for line, target in imported(name, path, lazy):
            theirs = layer(target)
            if theirs is not None and theirs > mine:
                where = os.path.relpath(path, ROOT)
                wrong.append(f"{where}:{line}: {name} ({LAYERS[mine] if mine >= 0 else 'base'}) imports "
                             f"{target} ({LAYERS[theirs]})")
    assert not wrong, "imports from a lower layer into a higher one:\n" + "\n".join(wrong)


def test_the_store_writer_needs_no_reader():
    """The format (header, checksums) lives in store/format.py, which both use; the writer imports no
    reader, so the two cannot drift into each other's details."""
    paths = dict(modules())
    found = {t for _, t in imported("kdprune.store.writer", paths["kdprune.store.writer"], exports())}
    assert "kdprune.store.format" in found and "kdprune.store.reader" not in found


@pytest.mark.parametrize("source, expected", [
    ("from kdprune.train import fit\n", ["kdprune.train"]),
    ("def f():\n    from kdprune import TeacherStore\n", ["kdprune.store"]),
    ("from ..loss import kd_loss\n", ["kdprune.loss"]),
])
def test_the_reader_sees_imports_of_every_form(tmp_path, source, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert [t for _, t in imported("kdprune.scores.mod", str(path), exports())] == expected


def test_commands_share_code_through_public_names_only():
    """A subcommand that needs another's helper imports a public name (or the helper moves to
    commands/common.py), so renaming one command's internals cannot break another."""
    wrong = []
    for name, path in modules():
        if not name.startswith("kdprune.commands."):
            continue
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdprune.commands.") \
                    and node.module != name:
                wrong += [f"{name} imports {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not wrong, "\n".join(wrong)
