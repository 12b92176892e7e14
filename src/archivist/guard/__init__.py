"""Guards around untrusted text: how it is quoted into prompts (injection and PII guards come next)."""
