"""Arrows point one way (bot -> skills -> pipeline) and heavy imports stay where models run."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
HEAVY = {"torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate"}
TOP_LEVEL_HEAVY_OK = set()  # no module imports torch & co. at module level


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module.split(".")[0]


def test_pipeline_never_imports_skills_or_bot_and_skills_never_import_bot():
    for pkg, banned in (("pipeline", {"skills", "bot", "slack_bolt", "slack_sdk", "semantic_kernel"}), ("skills", {"bot", "slack_bolt", "slack_sdk"})):
        for path in (ROOT / pkg).rglob("*.py"):
            found = {name for _, name in _imports(path)} & banned
            assert not found, f"{path.relative_to(ROOT)} imports {found}"


def test_heavy_imports_only_inside_functions():
    for pkg in ("pipeline", "skills", "bot"):
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    heavy = {n.split(".")[0] for n in names} & HEAVY
                    assert not heavy, f"{path.relative_to(ROOT)} imports {heavy} at module level"
