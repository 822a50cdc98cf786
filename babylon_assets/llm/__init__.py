"""LLM clients and servers: the LLM agent, the local llama.cpp server, OpenAI-compatible helpers; may import core/
only.
"""
