from .base import NUM_SYMBOLS, Distribution
from .categorical import PROB_FLOOR, Categorical, floor_and_normalize
from .logistic import DiscretizedLogisticMixture as DiscretizedLogisticMixture

__all__ = ["NUM_SYMBOLS", "PROB_FLOOR", "Categorical", "Distribution", "floor_and_normalize"]
