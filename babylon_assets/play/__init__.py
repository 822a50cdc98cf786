"""Play that fills the store: the simulator's driver and the live loop; may import core/, db/, llm/ and gateway/."""
