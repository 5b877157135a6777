"""The independent checker (../shared/conformance/omecheck.py), run as-is, many times in one
process: `run_checker` sends one argument list per line (JSON) and gets back its exit status
and output. Each run executes the script afresh (runpy: new globals, so no state carries over);
only its imports (tensorstore, tifffile, ome-types, yaozarrs) stay loaded, which a fresh
interpreter per dataset paid each time (~1 s on Linux, ~7 s under Wine). Nothing of the project
is imported here."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys


def main() -> None:
    checker = sys.argv[1]
    for line in sys.stdin:
        out = io.StringIO()
        sys.argv = [checker, *json.loads(line)]
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_path(checker, run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception as e:  # the checker crashed on this dataset: say so, go on
                print(f"FAIL checker crashed: {type(e).__name__}: {e}")
                code = 1
        sys.stdout.write(json.dumps({"code": code, "stdout": out.getvalue()}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
