"""`make paper`: execute the notebooks in story order with papermill (placeholder until the notebooks land)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("no notebooks yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
