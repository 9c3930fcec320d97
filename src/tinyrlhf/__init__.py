"""tinyrlhf: RLHF on very small language models, on one machine."""
__version__ = "0.1.0"
