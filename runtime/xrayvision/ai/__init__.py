"""AI relay: OpenAI-compatible client with failover, prompts, report parsing, pipeline."""
