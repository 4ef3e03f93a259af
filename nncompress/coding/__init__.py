from .range_coder import FREQ_TOTAL, Decoder, Encoder

__all__ = ["FREQ_TOTAL", "Decoder", "Encoder"]
