"""The lecture's three problem types, with their losses and metrics.

- n inputs, 1 output: :func:`sequence_classifier` (pool the states, then a readout);
- n to n: :func:`sequence_tagger` (a readout at every step);
- n to m: :func:`encoder_decoder` (teacher forcing in training, greedy ``generate``).

Losses (:func:`cross_entropy`, :func:`sequence_cross_entropy`) take logits and ignore
padding; the metrics are the lecture's evaluation tables (accuracy, per-class accuracy,
the confusion matrix). Built on the core (``import recurrax``); needs only jax.
"""

from recurrax._apps._losses import cross_entropy, sequence_cross_entropy
from recurrax._apps._metrics import accuracy, confusion_matrix, confusion_table, per_class_accuracy, predictions_table
from recurrax._apps._models import EncoderDecoder, Model, encoder_decoder, sequence_classifier, sequence_tagger

__all__ = [
    "Model",
    "EncoderDecoder",
    "sequence_classifier",
    "sequence_tagger",
    "encoder_decoder",
    "cross_entropy",
    "sequence_cross_entropy",
    "accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "confusion_table",
    "predictions_table",
]
