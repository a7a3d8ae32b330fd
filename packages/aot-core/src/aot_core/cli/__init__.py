"""The ``aot`` command: its entry point (``app``), what every subcommand shares
(``command``, ``arguments``, ``model_spec``) and one module per subcommand that is not a
feature package's own (``backends``, ``compile``, ``bench``, ``cache``; ``aot eval``,
``aot serve``, ``aot tune`` and ``aot usage`` live in their packages' ``command``)."""

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``aot`` console script. Importing ``aot_core.cli`` stays cheap: the parser and
    every subcommand load when the command runs."""
    from aot_core.cli.app import main as run

    return run(argv)
