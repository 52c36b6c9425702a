"""One thin adapter per vLLM model runner; everything else in the plugin knows no runner."""
