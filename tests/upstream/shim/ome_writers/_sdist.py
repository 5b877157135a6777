"""Load one of upstream's pure helper modules from the unpacked sdist (never committed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def load_into(module_name: str) -> None:
    """Run the sdist's source of ``ome_writers.<leaf>`` in the shim module's namespace."""
    helpers = os.environ.get("OWS_UPSTREAM_HELPERS")
    if not helpers:
        raise ImportError(f"{module_name}: OWS_UPSTREAM_HELPERS (the unpacked sdist's "
                          "helper sources) is not set; run tests/upstream/runner.py")
    leaf = module_name.rsplit(".", 1)[-1]
    path = Path(helpers) / f"{leaf}.py"
    module = sys.modules[module_name]
    code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    exec(code, module.__dict__)
