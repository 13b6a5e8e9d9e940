"""The core: cells, stack, scan, BPTT, layers, parallel scan, gradcheck, diagnostics, interop.

It imports nothing from ``recurrax._apps``, ``recurrax.data`` or ``recurrax.tasks``
(tests/test_layout.py); the public names are re-exported by ``recurrax``.
"""
