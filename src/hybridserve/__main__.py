"""``python -m hybridserve``: the same as the ``hybridserve`` command."""

from hybridserve.cli import main

main()
