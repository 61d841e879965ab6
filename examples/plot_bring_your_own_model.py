"""
===========================================================
Bring your own model: audit and repair a torch network
===========================================================

Every other example starts from :func:`~backdoorlearn.make_backdoor_benchmark`.
This one starts where a user does: with their own ``torch.nn.Module``, their
own arrays and their own training loop. The network here was trained on data
an attacker tampered with (a small white square sends a digit to label 7);
the defender only holds the trained network and a few hundred clean images.

What backdoorlearn expects from a model of yours:

- a ``torch.nn.Module`` whose ``forward`` returns **logits**, shape
  ``(n, n_classes)``: no softmax at the end (softmax of probabilities flattens
  the gradients Neural Cleanse follows; STRIP's entropies would be wrong);
- images as a numpy array of shape ``(n, C, H, W)``, float32, in the scale
  the network was trained on (``(n, H, W)`` is read as one channel);
- labels as integers ``0 .. n_classes - 1``.
"""

# %%
# The user's network and data
# ---------------------------
# A plain torch module, and scikit-learn's digits as float32 arrays in [0, 1].
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class DigitNet(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.head(self.features(x))  # logits: no softmax


digits = load_digits()
X = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8), float32 in [0, 1]
y = digits.target
X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)
X_clean, X_test, y_clean, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0)

# %%
# The attacker's part: poisoned training data
# -------------------------------------------
# 10% of the training images get a 2x2 white square in the bottom-right
# corner and the label 7 (BadNets). In real life this happened before the
# model reached you; here :class:`~backdoorlearn.BackdoorPoisoner` does it.
from backdoorlearn import BackdoorPoisoner, Trigger

trigger = Trigger.patch((1, 8, 8), size=2, location="bottom-right")
X_poisoned, y_poisoned = BackdoorPoisoner(trigger, target_label=7, poison_rate=0.1,
                                          random_state=0).fit_resample(X_train, y_train)

# %%
# The user's own training loop
# ----------------------------
torch.manual_seed(0)
net = DigitNet()
optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
data = torch.utils.data.TensorDataset(torch.from_numpy(X_poisoned), torch.from_numpy(y_poisoned))
loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
for epoch in range(20):
    for xb, yb in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        optimizer.step()
net.eval()


def accuracy(model, X, y):
    with torch.no_grad():
        return float((model(torch.from_numpy(X)).argmax(1).numpy() == y).mean())


X_test_triggered = trigger.apply(X_test[y_test != 7])
print(f"clean accuracy {accuracy(net, X_test, y_test):.1%}, "
      f"attack success {accuracy(net, X_test_triggered, np.full(len(X_test_triggered), 7)):.1%}")

# %%
# Is it backdoored? Audit the module directly
# -------------------------------------------
# :func:`~backdoorlearn.audit.audit_model` takes the module as it is (it
# works on a copy) and the defender's clean images, runs Neural Cleanse on
# every label and returns the report ``backdoorlearn audit`` writes, as a
# dict; with ``out`` it also writes ``report.json``, a self-contained
# ``report.html`` and the reversed triggers, ``triggers.npz``.
import os
import tempfile

from backdoorlearn.audit import audit_model, format_summary

out = os.path.join(tempfile.mkdtemp(), "audit")
report = audit_model(net, X_clean, y_clean, nc_steps=50, random_state=0, out=out)
print(format_summary(report, max_rows=4))

# %%
# The reversed trigger of the flagged label sits where the attacker's square is.
with np.load(os.path.join(out, "triggers.npz")) as reversed_triggers:
    stamps = reversed_triggers["masks"] * reversed_triggers["patterns"]
fig, axes = plt.subplots(1, 4, figsize=(6, 1.9))
panels = [("attacker's trigger", trigger.mask * trigger.pattern)]
panels += [(f"reversed, label {k}", stamps[k]) for k in (7, 0, 1)]
for ax, (title, image) in zip(axes, panels):
    ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()

# %%
# Repair it, and get a torch module back
# --------------------------------------
# :class:`~backdoorlearn.FinePruner` returns a fitted skorch
# ``NeuralNetClassifier``; its ``.module_`` is your ``DigitNet``, pruned and
# fine-tuned (a copy: ``net`` is unchanged).
from backdoorlearn import FinePruner

pruner = FinePruner(random_state=0).fit(net, X_clean, y_clean)
repaired = pruner.repaired_model_
module = repaired.module_  # a DigitNet
print(f"{type(module).__name__}: {len(pruner.pruned_units_)} channels of {pruner.layer_!r} pruned, then fine-tuned")
print(f"repaired: clean accuracy {accuracy(module, X_test, y_test):.1%}, "
      f"attack success {accuracy(module, X_test_triggered, np.full(len(X_test_triggered), 7)):.1%}")

# %%
# Save and reload
# ---------------
# :func:`~backdoorlearn.models.save_weights` writes the state_dict;
# :func:`~backdoorlearn.models.load_model` reads it back into the
# architecture you name (the class, or an import path
# ``"package.module:Class"`` on the command line) with
# ``torch.load(weights_only=True)``: a weights file runs no code when loaded.
from backdoorlearn.models import load_model, save_weights

path = os.path.join(tempfile.mkdtemp(), "digitnet-repaired.pt")
save_weights(repaired, path)
reloaded = load_model(path, arch=DigitNet, arch_kwargs={"n_classes": 10})
print(f"reloaded: clean accuracy {accuracy(reloaded, X_test, y_test):.1%}")

# %%
# A saved module with its architecture in an importable file is audited from
# the command line the same way::
#
#     backdoorlearn audit digitnet.pt --data clean.npz --arch mypackage.nets:DigitNet \
#         --arch-kwargs '{"n_classes": 10}'
#
# where ``clean.npz`` holds ``X`` and ``y`` (``np.savez("clean.npz", X=X_clean, y=y_clean)``).
