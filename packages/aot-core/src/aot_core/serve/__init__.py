"""``aot serve``: the command, and replicas on Ray Serve. What it asks of a backend is the
contract's ``aot_core.serving``."""
