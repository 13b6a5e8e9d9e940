"""``python -m recurrax``: see ``python -m recurrax --help``."""

from recurrax._apps._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
