from .base import NUM_SYMBOLS, Distribution
from .categorical import PROB_FLOOR, Categorical, floor_and_normalize

__all__ = ["NUM_SYMBOLS", "PROB_FLOOR", "Categorical", "Distribution", "floor_and_normalize"]
