"""``python -m sotflow.testing``: run the loopback server (see ``sotflow.testing.server``).

The package's own entry point, because ``python -m sotflow.testing.server`` imports the
server module twice (once through this package) and Python warns about it.
"""

from .server import main

main()
