"""The architecture is checked, not only described (docs/architecture.md): the import-linter contracts of
pyproject.toml (layers, public modules only, no torch in the engine, no cycles), the names that cross packages,
and no repeated blocks of code in the package.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "bortengine"
STAGES = ("engine", "profiling", "search", "training", "export", "serving", "cli")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def _imports(path: Path, module: str):
    """(line, imported module, imported names) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield node.lineno, base, [a.name for a in node.names]


def test_import_contracts_hold():
    """lint-imports checks the contracts written in pyproject.toml; any broken one fails with its report."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed: scripts/setup.sh installs import-linter")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    kept = re.search(r"Contracts: (\d+) kept, (\d+) broken", proc.stdout)
    assert kept and int(kept.group(1)) >= 9 and kept.group(2) == "0", proc.stdout[-3000:]


def test_no_private_name_crosses_a_package():
    """A stage uses another's public names only: no `_name` imported from a module of another package, and the
    native module is imported by engine.native alone."""
    bad = []
    for module, path in _modules().items():
        for line, imported, names in _imports(path, module):
            if not imported.startswith("bortengine"):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if imported == "bortengine._core" or "_core" in names and imported == "bortengine":
                if module != "bortengine.engine.native":
                    bad.append(f"{where} imports the native module (use bortengine.engine.core())")
                continue
            if _stage(imported) == _stage(module) and _stage(module) is not None:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{where} imports {private} from {imported}")
            if any(p.startswith("_") and p != "__init__" for p in imported.split(".")[1:]) \
                    and imported != "bortengine._core":
                bad.append(f"{where} imports the private module {imported}")
    assert not bad, "\n".join(bad)


# -- repeated code -------------------------------------------------------------------------------------------------
WINDOW = 6
# The per-ISA SIMD traits are one interface written once per instruction set on purpose (csrc/simd.h).
EXEMPT = {"csrc/simd.h"}


def _significant_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text with white space folded) of the lines that count: not blank, not only a comment, not
    lone punctuation, not an import or include."""
    comment = "#" if path.suffix == ".py" else "//"
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = " ".join(raw.split())
        if not text or text.startswith(comment) or re.fullmatch(r"[\s()\[\]{}:;,.\"']*", text):
            continue
        if re.match(r"(from \S+ )?import |#include ", text):
            continue
        out.append((n, text))
    return out


def test_no_block_of_six_lines_is_repeated():
    """No run of six significant lines stands in two places of the package (Python and C++): one piece of code for
    one job."""
    files = sorted(PACKAGE.rglob("*.py")) + sorted(p for p in (ROOT / "csrc").glob("*") if p.suffix in (".cc", ".h", ".inc"))
    seen: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for path in files:
        rel = str(path.relative_to(ROOT))
        if rel in EXEMPT:
            continue
        lines = _significant_lines(path)
        for i in range(len(lines) - WINDOW + 1):
            window = tuple(t for _, t in lines[i:i + WINDOW])
            places = seen[window]
            # overlapping windows of one run in the same file are one place
            if not places or places[-1][0] != rel or lines[i][0] > places[-1][1] + WINDOW * 3:
                places.append((rel, lines[i][0]))
    repeated = {w: p for w, p in seen.items() if len(p) > 1}
    report = [f"{' and '.join(f'{f}:{n}' for f, n in places)}:\n    " + "\n    ".join(window)
              for window, places in list(repeated.items())[:10]]
    assert not repeated, f"{len(repeated)} repeated blocks, the first:\n" + "\n".join(report)


def test_the_readme_layout_names_every_module():
    """The README's layout table matches the tree: every package and module of src/bortengine, and every source
    file of csrc/ but the per-ISA wrappers (kernels_<isa>.cc, named by their pattern), appears in it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Layout"):text.index("## Design notes")]
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py"):
            named = f"src/bortengine/{rel.parent}/" in table or f"`{rel.parent.name}/`" in table
            if rel.parent != Path(".") and not named:
                missing.append(str(rel.parent) + "/")
        elif f"`{path.name}`" not in table:
            missing.append(str(rel))
    wrappers = re.compile(r"kernels(_int8|_bf16)?_(scalar|avx2|avx512|avx512vnni)\.cc")
    for path in sorted((ROOT / "csrc").glob("*.cc")):
        if not wrappers.fullmatch(path.name) and f"csrc/{path.name}" not in table:
            missing.append(f"csrc/{path.name}")
    assert "kernels_<isa>.cc" in table
    assert not missing, f"README.md's layout table does not name: {missing}"
