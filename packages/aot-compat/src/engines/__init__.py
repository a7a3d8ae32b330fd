"""The old ``engines`` package, kept so that ``from engines.shared import ...`` still works.

Provided by aot-compat; the code behind it lives in ``aot_compat`` and the backends.
"""
