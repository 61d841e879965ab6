"""Model-level defenses: is this model backdoored, which label, what trigger?"""

from ._decision import log_anomaly_scores, log_norm_thresholds
from ._neural_cleanse import NeuralCleanse, mad_anomaly_index

__all__ = ["NeuralCleanse", "log_anomaly_scores", "log_norm_thresholds", "mad_anomaly_index"]
