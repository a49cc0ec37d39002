"""AI: the OpenAI-compatible client with failover, prompts, answer parsing, the text
services, the report pipeline and the relay loop."""
