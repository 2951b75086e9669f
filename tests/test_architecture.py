"""The shape of the code: generic code asks a decoder's declaration, never its class, and the
README's layout section matches the package tree."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "finesam"
# Only the components and the registry may know concrete decoder classes.
ALLOWED = ("modeling/", "registry.py")
# modeling/decoders/ holds them all (sam/, hq/, pi/); their file names are listed too.
DECODER_MODULES = ("decoders", "mask_decoder", "hq_decoder", "pi_decoder", "hq_token", "high_res_head", "pi_interactor",
                   "object_embedder")
DECLARED = {"capabilities", "new_parts", "official_prefixes", "correct"}


def generic_sources() -> list[tuple[str, str]]:
    sources = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith(ALLOWED):
            sources.append((relative, path.read_text()))
    return sources


@pytest.mark.parametrize("relative, source", generic_sources(), ids=lambda value: value if value.endswith(".py") else "")
def test_generic_code_asks_the_declaration(relative, source):
    imported = re.findall(r"from \.+modeling\.([\w.]+) import", source) + re.findall(r"finesam\.modeling\.([\w.]+)", source)
    parts = {part for module in imported for part in module.split(".")}
    assert not parts & set(DECODER_MODULES), f"{relative} imports a decoder module: {imported}"
    class_checks = re.findall(r"(?:isinstance|issubclass|type)\([^)]*(?:Decoder|Interactor|HQToken|HighRes)", source)
    assert not class_checks, f"{relative} tests a decoder's class: {class_checks}"
    attributes = set(re.findall(r"mask_decoder\.(\w+)", source)) - DECLARED
    assert not attributes, f"{relative} reads undeclared decoder attributes: {attributes}"
    probes = re.findall(r"(?:getattr|hasattr)\([^)]*decoder", source)
    assert not probes, f"{relative} probes a decoder for attributes: {probes}"
    assert "high_resolution" not in source and "is_high_res" not in source, relative


def readme_layout() -> set[str]:
    """Paths listed in the README's layout tree (``src/finesam/...``), as relative paths."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```", 2)[1]
    paths, stack = set(), []
    for line in tree.splitlines():
        match = re.match(r"^(\s*)([\w./]+)", line)
        if not match or match.group(2) == "src/finesam/":
            continue
        depth = len(match.group(1)) // 2 - 1
        name = match.group(2)
        stack[depth:] = [name]
        paths.add("".join(stack[: depth + 1]).rstrip("/"))
    return {path for path in paths if not path.endswith("__init__.py")}


def test_readme_layout_matches_the_tree():
    listed = readme_layout()
    actual = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*")
        if "__pycache__" not in path.parts and path.name != "__init__.py" and not path.name.endswith(".pyc")
        and (path.is_dir() or path.suffix in (".py", ".html", ".js", ".css"))
    }
    assert listed == actual, f"in the tree, not the README: {sorted(actual - listed)}; in the README only: {sorted(listed - actual)}"
