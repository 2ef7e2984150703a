"""Print pyproject.toml's dependencies (and extras), one a line, with some replaced by name.

    python scripts/requirements_with.py --extra dev trl==1.16.0 torch==2.13.0 > requirements.txt

`make setup-trl-latest` installs the newest TRL's venv from this, so the dependency list lives in
pyproject.toml only. A replacement must name a dependency that is there (a typo fails, not adds).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def requirements(replacements: list[str], extras: list[str] = (), pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"]) + [d for e in extras for d in project["optional-dependencies"][e]]
    new = {_name(r): r for r in replacements}
    unknown = set(new) - {_name(d) for d in deps}
    if unknown:
        raise SystemExit(f"requirements_with.py: {', '.join(sorted(unknown))} is not a dependency in {pyproject}")
    return [new.get(_name(d), d) for d in deps]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--extra", action="append", default=[], help="an optional-dependencies group to include too")
    p.add_argument("replacements", nargs="*", help="requirements replacing the dependency of the same name")
    a = p.parse_args(argv)
    print("\n".join(requirements(a.replacements, a.extra)))


if __name__ == "__main__":
    main(sys.argv[1:])
