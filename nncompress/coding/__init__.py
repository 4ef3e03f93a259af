from .range_coder import Decoder, Encoder

__all__ = ["Decoder", "Encoder"]
