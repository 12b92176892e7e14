"""The HTTP service: FastAPI app, API keys, rate limits, background ingestion, SSE answers, the web UI."""
