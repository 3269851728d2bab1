"""hfserve: an OpenAI-compatible server for HuggingFace models on Ray Serve."""

__version__ = "0.1.0"
