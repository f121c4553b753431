"""``python -m sotflow.cli``: the same as the ``sotflow`` console script."""

from . import main

if __name__ == "__main__":
    main()
