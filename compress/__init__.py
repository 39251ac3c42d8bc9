"""compress: make fine-tuned transformer models smaller and faster, measured."""

__version__ = "0.1.0"
