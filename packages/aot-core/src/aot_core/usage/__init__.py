"""The usage log every `aot eval` and `aot bench` appends to, and `aot usage`'s report."""
