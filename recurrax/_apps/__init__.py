"""Applications over the core: models, losses, metrics, training, demo, CLI.

The public names are re-exported by ``recurrax``; the CLI is ``python -m recurrax``.
"""
