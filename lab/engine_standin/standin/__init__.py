"""Engine stand-in: a TEST DOUBLE of SGLang / vLLM's HTTP servers for the lab (no GPU, no model)."""
