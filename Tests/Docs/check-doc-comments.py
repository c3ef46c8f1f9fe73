#!/usr/bin/env python3
"""Tests/Docs/check-doc-comments.py MODULE... — lists the public symbols of the given modules
that have no doc comment of their own, and exits 1 if there is any.

Reads the symbol graphs that `swift package generate-documentation` extracted under .build/
(run it first; `make docs` does both). A symbol counts as documented when a `///` comment
stands right above its declaration: one it only inherits from a protocol requirement (a
`description`, an `AsyncSequence` typealias, a default implementation) does not count, since
it says nothing about this type's behaviour, threads or ownership. Symbols the compiler
synthesises (no source location) are not checked.
"""
import glob
import json
import os
import sys

# How many lines may separate a doc comment from its declaration's name (attributes, a
# wrapped signature's first line).
MAX_GAP = 4


def newest_symbol_graphs(root, module):
    """The symbol graph files of `module` from the newest extraction under .build/."""
    pattern = os.path.join(root, ".build", "*", "extracted-symbols", "*", module, "*.symbols.json")
    files = glob.glob(pattern)
    if not files:
        sys.exit(f"check-doc-comments: no symbol graph for {module} under .build/ "
                 f"(run swift package generate-documentation --target {module} first)")
    newest = max(os.path.getmtime(f) for f in files)
    directory = os.path.dirname(max(files, key=os.path.getmtime))
    return [f for f in files if os.path.dirname(f) == directory and newest - os.path.getmtime(f) < 600]


def undocumented(root, module):
    sources = "file://" + os.path.join(root, "Sources") + "/"
    found = []
    for path in newest_symbol_graphs(root, module):
        with open(path) as file:
            graph = json.load(file)
        for symbol in graph["symbols"]:
            if symbol.get("accessLevel") not in ("public", "open"):
                continue
            location = symbol.get("location")
            if not location or not location["uri"].startswith(sources):
                continue
            line = location["position"]["line"]
            comment = symbol.get("docComment")
            own = (
                comment is not None
                and comment.get("uri") == location["uri"]
                and comment["lines"]
                and 0 <= line - comment["lines"][-1]["range"]["end"]["line"] <= MAX_GAP
                and any(entry["text"].strip() for entry in comment["lines"])
            )
            if not own:
                name = ".".join(symbol["pathComponents"])
                where = location["uri"][len("file://" + root) + 1:]
                found.append(f"{where}:{line + 1}: {module}.{name} ({symbol['kind']['displayName']})")
    return sorted(set(found))


def main():
    root = os.getcwd()
    modules = sys.argv[1:]
    if not modules:
        sys.exit(__doc__)
    missing = [entry for module in modules for entry in undocumented(root, module)]
    for entry in missing:
        print(f"undocumented public symbol: {entry}")
    print(f"check-doc-comments: {len(missing)} undocumented public symbols in {', '.join(modules)}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
