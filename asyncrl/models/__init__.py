"""Model helpers: a tiny random Llama for tests and an importer for a real GGUF model."""
