"""The repository stands on its own: no tracked file refers to a path outside it.

A hospital clones calhl7 with nothing beside it, so a test, tool or document that reads
`../something`, climbs above the checkout with `Path(__file__).parents[N]`, or names a folder of
one machine (`/home/...`) works only where it was written. Checked over `git ls-files`:
- relative paths that start with `../` and leave the repository from the file's folder, or
  from the root for a path that does not exist from the file's folder (a command in a doc or
  in printed help is run from the root);
- Python path arithmetic on `__file__` (`.parent`, `.parents[N]`, names bound to it) that
  ends above the root;
- absolute paths of a user's or a machine's folders (`/home/`, `/root/`, `/Users/`, `/work/`,
  `/tmp/`, `/mnt/`, `/media/`); URLs are not paths, and files under `docker/` name paths inside
  the image.
"""

from __future__ import annotations

import ast
import posixpath
import re
import subprocess
from pathlib import PurePosixPath

import pytest

from tests.conftest import REPO

# A run of `../` and what follows it, not preceded by a path or URL character.
CLIMB = re.compile(r"(?<![\w./~-])((?:\.\./)+[\w.\-/]*)")
MACHINE = re.compile(r"(?<![\w.:/~-])(/(?:home|root|Users|work|tmp|mnt|media)/)")
IMAGE_DIRS = ("docker/",)  # paths in these files are inside the container
SELF = "tests/unit/test_repository.py"  # spells out the paths it looks for


def tracked_files() -> list[str]:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown (run from a clone)")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                         capture_output=True).stdout
    return [name for name in out.decode("utf-8").split("\0") if name]


def _outside(path: str) -> bool:
    return path == ".." or path.startswith("../")


def climbing_paths(rel: str, text: str, exists: set[str]) -> list[str]:
    """`../` paths in `text` (the file `rel`) that leave the repository."""
    found = []
    folder = posixpath.dirname(rel)
    for match in CLIMB.finditer(text):
        target = match.group(1).rstrip(".,;:)/")
        from_file = posixpath.normpath(posixpath.join(folder, target))
        from_root = posixpath.normpath(target)
        if _outside(from_file) or (from_file not in exists and _outside(from_root)):
            found.append(target)
    return found


def machine_paths(rel: str, text: str) -> list[str]:
    if rel.startswith(IMAGE_DIRS):
        return []
    return [m.group(1) for m in MACHINE.finditer(text)]


class _PathWalk(ast.NodeVisitor):
    """Evaluates `Path(__file__)` arithmetic, relative to the repository root."""

    def __init__(self, rel: str, modules: dict[str, dict[str, PurePosixPath]]) -> None:
        self.file = PurePosixPath(rel)
        self.modules = modules
        self.names: dict[str, PurePosixPath] = {}
        self.found: list[str] = []

    def value(self, node: ast.expr) -> PurePosixPath | None:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, (ast.Name, ast.Attribute)) and (
                getattr(func, "id", None) == "Path" or getattr(func, "attr", None) == "Path"
            ):
                args = node.args
                if len(args) == 1 and isinstance(args[0], ast.Name) and args[0].id == "__file__":
                    return self.file
                return None
            if isinstance(func, ast.Attribute) and func.attr in ("resolve", "absolute"):
                return self.value(func.value)
            return None
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            base = self.value(node.value)
            return None if base is None else self._up(base, 1)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parents" and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, int):
            base = self.value(node.value.value)
            return None if base is None else self._up(base, node.slice.value + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) \
                and isinstance(node.right, ast.Constant) and isinstance(node.right.value, str):
            base = self.value(node.left)
            return None if base is None else base / node.right.value
        return None

    def _up(self, path: PurePosixPath, levels: int) -> PurePosixPath:
        return PurePosixPath(posixpath.normpath(posixpath.join(str(path), *[".."] * levels)))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        known = self.modules.get(node.module or "", {})
        for alias in node.names:
            if alias.name in known:
                self.names[alias.asname or alias.name] = known[alias.name]

    def visit_Assign(self, node: ast.Assign) -> None:
        target = self.value(node.value)
        for t in node.targets:
            if isinstance(t, ast.Name) and target is not None:
                self.names[t.id] = target
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.expr) and not isinstance(node, ast.Name):  # found where bound
            path = self.value(node)
            if path is not None and _outside(str(path)):
                self.found.append(f"line {node.lineno}: {ast.unparse(node)}")
                return  # one finding per expression, not one per sub-expression
        super().generic_visit(node)


def module_of(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def path_names(sources: dict[str, str]) -> dict[str, dict[str, PurePosixPath]]:
    """Per module, the names bound to `Path(__file__)` arithmetic (for `from m import NAME`)."""
    modules: dict[str, dict[str, PurePosixPath]] = {}
    for rel, source in sources.items():
        walk = _PathWalk(rel, {})
        walk.visit(ast.parse(source, filename=rel))
        modules[module_of(rel)] = walk.names
    return modules


def python_climbs(rel: str, source: str, modules: dict[str, dict[str, PurePosixPath]]) -> list[str]:
    walk = _PathWalk(rel, modules)
    walk.visit(ast.parse(source, filename=rel))
    return walk.found


def problems_of(rel: str, text: str, exists: set[str],
                modules: dict[str, dict[str, PurePosixPath]] | None = None) -> list[str]:
    found = [f"{rel}: {p}" for p in climbing_paths(rel, text, exists)]
    found += [f"{rel}: {p}" for p in machine_paths(rel, text)]
    if rel.endswith(".py"):
        found += [f"{rel}: {p}" for p in python_climbs(rel, text, modules or {})]
    return found


def test_no_tracked_file_refers_to_a_path_outside_the_repository() -> None:
    files = tracked_files()
    exists = set(files) | {posixpath.dirname(f) for f in files}
    texts: dict[str, str] = {}
    for rel in files:
        try:
            texts[rel] = (REPO / rel).read_text("utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary, or deleted in the working tree
    modules = path_names({rel: text for rel, text in texts.items() if rel.endswith(".py")})
    problems: list[str] = []
    for rel, text in texts.items():
        if rel != SELF:
            problems += problems_of(rel, text, exists, modules)
    assert problems == [], "paths outside the repository (keep what a file needs inside it):\n" + \
        "\n".join(problems)


# --- the checks themselves catch what they are for, and pass what is legitimate ------------


# The bad examples below are assembled from parts, so that this file itself names no path
# outside the repository for any other checker that reads it as text.
UP = "." + "./"
SLASH = "/"


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("tests/x.py", f'SAMPLES = "{UP}shared/calcom"'),
        ("engine/demo.py",
         f'print("./dev render {UP}shared/calcom/webhooks/booking_created.json")'),
        ("README.md", f"see [the brief]({UP}BRIEF.md)"),
        ("docs/a/b.md", f"[up]({UP * 3}x.md)"),
        ("tests/x.py", f"ROOT = '{SLASH}home/alice/calhl7'"),
        ("README.md", f"run `cd {SLASH}work/main && ./dev test`"),
        ("load/x.py", f"--ledger {SLASH}tmp/ledger.jsonl"),
        ("tests/conftest.py", "from pathlib import Path\n"
                              "REPO = Path(__file__).resolve().parents[1]\n"
                              "SHARED = REPO.parent / 'shared'\n"),
        ("tests/calcom_factory.py", "import pathlib\n"
                                    "D = pathlib.Path(__file__).resolve().parents[2] / 'shared'\n"),
        ("load/bench_sim.py", "ROOT = Path(__file__).resolve().parent.parent\n"
                              "S = ROOT.parent / 'x'\n"),
        ("tests/test_x.py", "from tests.conftest import REPO\nHOOKS = REPO.parent / 'shared'\n"),
    ],
)
def test_outside_paths_are_found(rel: str, text: str) -> None:
    modules = path_names({"tests/conftest.py": "REPO = Path(__file__).resolve().parents[1]\n"})
    assert problems_of(rel, text, {"README.md", "engine", "tests", "docs/a", "docs"}, modules) != []


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("engine/inbound/README.md", "see [the README](../../README.md)"),
        ("docker/compose.yaml", "volumes:\n  - ../channels:/etc/calhl7/channels:ro\n"
                                "command: [sim-ehr, --log, /tmp/ehr-main.jsonl]"),
        ("README.md", "https://example.com/home/x and http://host/tmp/y, ~/work/calhl7"),
        ("README.md", "a range 1..3, an ellipsis ... and `..` alone"),
        ("tests/conftest.py", "from pathlib import Path\n"
                              "REPO = Path(__file__).resolve().parents[1]\n"
                              "F = REPO / 'tests' / 'fixtures'\n"),
        ("load/bench_sim.py", "ROOT = Path(__file__).resolve().parent.parent\nS = ROOT / 'x'\n"),
        ("engine/hl7/render.py", "T = Path(__file__).resolve().parents[2] / 'hl7_templates'\n"),
        ("Dockerfile", "COPY . /opt/calhl7\nENV CALHL7_DATA=/var/lib/calhl7"),
    ],
)
def test_legitimate_paths_pass(rel: str, text: str) -> None:
    exists = {"README.md", "channels", "engine", "engine/inbound", "tests", "docker"}
    assert problems_of(rel, text, exists) == []
