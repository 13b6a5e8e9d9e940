"""Training with Optax and checkpoints with Orbax (the ``train`` extra).

``pip install "recurrax[train]"`` installs optax, orbax-checkpoint and tqdm.
"""

from recurrax._apps._train import FitResult, fit, load_checkpoint, make_train_step, save_checkpoint

__all__ = ["fit", "FitResult", "make_train_step", "save_checkpoint", "load_checkpoint"]
