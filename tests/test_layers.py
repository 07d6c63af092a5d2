"""The package's import graph: every module visible to the tools, and no import cycle.

The layering itself (which package may import which) is import-linter's contract in
pyproject.toml, run by ``scripts/test``; these tests keep what it relies on true.
"""

from __future__ import annotations

from pathlib import Path

import grimp

import hybridserve

PACKAGE = Path(hybridserve.__file__).parent


def test_every_package_directory_has_an_init() -> None:
    """A folder of modules without ``__init__.py`` is a namespace package, which grimp (and so
    import-linter) does not walk: its imports, cycles included, would go unchecked."""
    missing = [
        str(d.relative_to(PACKAGE))
        for d in sorted({p.parent for p in PACKAGE.rglob("*.py")})
        if "__pycache__" not in d.parts and not (d / "__init__.py").exists()
    ]
    assert missing == []


def test_no_import_cycles_between_modules() -> None:
    """Lazy imports inside functions count: a cycle is a cycle however it is spelled."""
    graph = grimp.build_graph("hybridserve")
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append(" -> ".join((importer, *back)))
    assert cycles == []
