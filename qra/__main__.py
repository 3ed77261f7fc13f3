"""``python -m qra`` is the ``qra`` command."""

from .cli import main

main()
