"""Shape of the tvm_mpq package: longest functions, largest modules, private cross-module uses.

    python scripts/package_shape.py [--top N]

Counts from the source (AST only; nothing is imported). A function's length is its code
lines after the docstring (comments and blank lines inside the body count); a private
cross-module use is ``from tvm_mpq... import _name`` or ``module._name`` on a module imported
from tvm_mpq. Exit status 1 when a limit is exceeded (tests/test_layout.py checks the same).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: limits of issue 10: no function over ~80 code lines, no module over ~500 lines
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
ROOT = Path(__file__).resolve().parents[1] / "tvm_mpq"


@dataclass
class Shape:
    """Sizes of the package; each list is sorted largest first."""

    functions: list[tuple[int, str]] = field(default_factory=list)  # (code lines, file:qualname)
    modules: list[tuple[int, str]] = field(default_factory=list)  # (lines, file)
    private_uses: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        out = [f"function {n} lines > {MAX_FUNCTION_LINES}: {w}" for n, w in self.functions
               if n > MAX_FUNCTION_LINES]
        out += [f"module {n} lines > {MAX_MODULE_LINES}: {w}" for n, w in self.modules
                if n > MAX_MODULE_LINES]
        return out + [f"private cross-module use: {u}" for u in self.private_uses]


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    has_doc = (len(body) > 1 and isinstance(body[0], ast.Expr)
               and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str))
    start = body[1].lineno if has_doc else body[0].lineno
    return node.end_lineno - start + 1


def _functions(tree: ast.AST, rel: str) -> list[tuple[int, str]]:
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((_body_lines(child), f"{rel}:{prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _private_uses(tree: ast.AST, rel: str) -> list[str]:
    out, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            internal = node.level > 0 or (node.module or "").startswith("tvm_mpq")
            for a in node.names if internal else ():
                if a.name.startswith("_") and not a.name.startswith("__"):
                    out.append(f"{rel}:{node.lineno} imports {a.name} from {node.module}")
                modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            modules.update((a.asname or a.name).split(".")[0] for a in node.names
                           if a.name.startswith("tvm_mpq"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            out.append(f"{rel}:{node.lineno} uses {node.value.id}.{node.attr}")
    return out


def measure(root: Path = ROOT) -> Shape:
    """The package's :class:`Shape`."""
    shape = Shape()
    for f in sorted(root.rglob("*.py")):
        rel = str(f.relative_to(root.parent))
        src = f.read_text()
        tree = ast.parse(src)
        shape.modules.append((len(src.splitlines()), rel))
        shape.functions += _functions(tree, rel)
        shape.private_uses += _private_uses(tree, rel)
    shape.functions.sort(reverse=True)
    shape.modules.sort(reverse=True)
    return shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=5, help="how many of the largest to list")
    args = ap.parse_args(argv)
    s = measure()
    print(f"modules: {len(s.modules)}, functions: {len(s.functions)}")
    print("longest functions (code lines):")
    for n, w in s.functions[:args.top]:
        print(f"  {n:4d}  {w}")
    print("largest modules (lines):")
    for n, w in s.modules[:args.top]:
        print(f"  {n:4d}  {w}")
    print(f"private cross-module uses: {len(s.private_uses)}")
    for u in s.private_uses:
        print(f"  {u}")
    bad = s.violations()
    print(f"limits (function <= {MAX_FUNCTION_LINES}, module <= {MAX_MODULE_LINES}, 0 private "
          f"uses): {'met' if not bad else f'{len(bad)} exceeded'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
