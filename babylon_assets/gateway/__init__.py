"""The gateway: an OpenAI-compatible endpoint that records the game's agents' LLM calls (DESIGN 6)."""
