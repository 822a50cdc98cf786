"""The agents' OpenAI-compatible endpoint that records every call into the store (DESIGN 6); may import core/, db/
and llm/.
"""
