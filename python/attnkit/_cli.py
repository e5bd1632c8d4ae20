"""The `attnkit` console script: runs the C++ command line tool shipped inside the package."""
from __future__ import annotations

import os
import sys


def main() -> None:
    exe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "attnkit")
    if not os.access(exe, os.X_OK):
        sys.stderr.write("attnkit: error: this build of the package has no command line tool "
                         f"({exe} is missing; it is built when CLI11 and nlohmann-json are "
                         "installed at build time)\n")
        sys.exit(2)
    os.execv(exe, [exe, *sys.argv[1:]])


if __name__ == "__main__":
    main()
