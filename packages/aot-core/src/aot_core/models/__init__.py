"""Where models come from: the built-in tiny Llama, real-model shape presets, GGUF input
and the content-hashed model cache they are all saved in."""
