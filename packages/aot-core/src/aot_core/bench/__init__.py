"""`aot bench`: the benchmark's policy, its fresh-process worker, prompts and results."""
