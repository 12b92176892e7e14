"""Language-model calls: the `LLM` protocol, providers, and the gateway every model call goes through."""
