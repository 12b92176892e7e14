"""Grounded answers: context packing, versioned prompts, extractive and LLM answering, citation checks, refusal."""
