"""LlamaController: supervise inference engines behind one governed OpenAI/Ollama endpoint."""

__version__ = "0.1.0"
