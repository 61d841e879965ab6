"""A skorch callback showing one tqdm bar over epochs."""

from __future__ import annotations

from skorch.callbacks import Callback


class EpochProgressBar(Callback):
    """Show training progress as one tqdm bar over epochs, with the last loss.

    The bar itself is never pickled (``__getstate__`` drops it), so a net
    trained with it stays picklable, as skorch's own ``ProgressBar``.
    """

    def __init__(self, desc="training"):
        self.desc = desc

    def initialize(self):
        self.bar_ = None
        return self

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        self.bar_ = tqdm(total=net.max_epochs, desc=self.desc, leave=False)

    def on_epoch_end(self, net, **kwargs):
        if self.bar_ is not None:
            loss = net.history[-1].get("train_loss")
            if loss is not None:
                self.bar_.set_postfix(loss=f"{loss:.3f}")
            self.bar_.update(1)

    def on_train_end(self, net, **kwargs):
        if self.bar_ is not None:
            self.bar_.close()
            self.bar_ = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["bar_"] = None
        return state
