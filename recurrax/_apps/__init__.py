"""The applications over the core: models, losses, metrics, training, plots, demo, CLI.

Their public names are exported by ``recurrax.models``, ``recurrax.train`` and
``recurrax.plots``; the CLI is ``python -m recurrax``. The core never imports this package.
"""
