"""``python -m ise``: the ``ise`` command."""

from ise.cli import main

main()
