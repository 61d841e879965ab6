"""Model-level defenses: is this model backdoored, which label, what trigger?"""

from ._decision import log_anomaly_scores
from ._neural_cleanse import NeuralCleanse, mad_anomaly_index

__all__ = ["NeuralCleanse", "log_anomaly_scores", "mad_anomaly_index"]
