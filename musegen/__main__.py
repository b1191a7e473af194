"""``python -m musegen`` (and ``torchrun -m musegen``) run the ``musegen`` console script."""

from musegen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
