"""CI: the installed wheel, imported from outside the source tree, holds every module and data file.

Usage: ``python /path/to/repo/.ci/wheel_check.py /path/to/repo`` from a directory outside the repository.
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import sys

import seglosses

source = pathlib.Path(sys.argv[1]).resolve() / "src" / "seglosses"
installed = pathlib.Path(seglosses.__file__).resolve().parent
if installed == source:
    sys.exit(f"wheel check: seglosses was imported from the source tree ({installed}), not from the wheel")
walk = pkgutil.walk_packages(seglosses.__path__, "seglosses.")
modules = [info.name for info in walk if not info.name.endswith("__main__")]  # __main__ runs the CLI
for name in modules:
    importlib.import_module(name)
files = [path.relative_to(source) for path in source.rglob("*") if path.is_file()]
missing = [str(f) for f in files if "__pycache__" not in f.parts and not (installed / f).exists()]
if missing:
    sys.exit(f"wheel check: the wheel lacks {missing}; add them to [tool.setuptools.package-data]")
print(f"wheel check: {len(modules)} modules import from {installed}; no file of src/seglosses is missing")
