"""What the repairs share: the model and data checks."""

from __future__ import annotations

import numpy as np

from .._utils import check_images, check_labels
from ..models import ModelAdapter


def prepare(model, X, y, *, defense, device, batch_size, y_required=True):
    """White-box adapter on the user's model, checked images and labels, classes."""
    adapter = ModelAdapter(model, defense=defense, device=device, batch_size=batch_size)
    adapter.require_white_box()
    X = check_images(X, name="X", caller=defense)
    classes = adapter.classes_
    n_classes = len(classes) if classes is not None else adapter.n_classes(X[:1])
    if classes is None:
        classes = np.arange(n_classes)
    if y is None and not y_required:
        return adapter, X, None, classes
    y = check_labels(y, n_samples=len(X), n_classes=n_classes, caller=defense)
    return adapter, X, y, classes
