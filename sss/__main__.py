"""``python -m sss ...`` (and ``torchrun -m sss ...``) run the ``sss`` command line."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
