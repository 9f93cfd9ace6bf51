"""trtbuild: from a Hugging Face LLM to a production Triton Inference Server deployment."""

__version__ = "0.1.0"
