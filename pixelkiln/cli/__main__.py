"""``python -m pixelkiln.cli``: the ``kiln`` command."""

from pixelkiln.cli import main

main()
