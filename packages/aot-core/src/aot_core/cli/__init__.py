"""The ``aot`` command: its entry point (``app``), what every subcommand shares
(``command``, ``arguments``, ``model_spec``) and one module per subcommand that is not a
feature package's own (``backends``, ``compile``, ``bench``, ``cache``; ``aot eval``,
``aot serve``, ``aot tune`` and ``aot usage`` live in their packages' ``command``)."""
