"""Model-level defenses: is this model backdoored, which label, what trigger?"""

from ._neural_cleanse import NeuralCleanse, mad_anomaly_index

__all__ = ["NeuralCleanse", "mad_anomaly_index"]
