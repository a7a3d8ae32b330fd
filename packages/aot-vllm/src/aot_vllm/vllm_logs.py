"""Capture what the ``vllm`` logger says, in this process and in vLLM's engine processes.

vLLM configures its ``vllm`` logger with ``logging.config.dictConfig`` (at import and, in
newer releases, again when an ``LLM`` is built), which drops handlers added by hand, and
its engine core runs in child processes by default. A logging config file named by
``VLLM_LOGGING_CONFIG_PATH`` survives both: every process applies it, so every record
lands in one file with its wall-clock time and process id.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aot_vllm.engine_env import EngineVar

_MARK = "\x1eAOT\x1f"
_FORMAT = _MARK + "%(created).6f\x1f%(process)d\x1f%(levelname)s\x1f%(name)s\x1f%(message)s"


@dataclass(frozen=True, kw_only=True)
class LogRecordLine:
    """One record the ``vllm`` logger emitted."""

    time: float
    """Wall-clock time (``time.time()``) of the record."""

    pid: int
    """Process that emitted it."""

    level: str
    """Level name, e.g. INFO."""

    logger: str
    """Logger name, e.g. vllm.compilation.decorators."""

    message: str
    """The formatted message (may span lines)."""


def _user_level() -> str:
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "INFO"


def logging_config(log_file: Path, *, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A dictConfig that keeps vLLM's console output and adds our capture file."""
    config: dict[str, Any] = base or {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "vllm_console": {
                "format": "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                "datefmt": "%m-%d %H:%M:%S",
            }
        },
        "handlers": {
            "vllm_console": {
                "class": "logging.StreamHandler",
                "formatter": "vllm_console",
                "level": _user_level(),
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {"vllm": {"handlers": ["vllm_console"], "level": "DEBUG", "propagate": False}},
    }
    config.setdefault("version", 1)
    config.setdefault("disable_existing_loggers", False)
    config.setdefault("formatters", {})["aot_capture"] = {"format": _FORMAT}
    config.setdefault("handlers", {})["aot_capture"] = {
        "class": "logging.FileHandler",
        "formatter": "aot_capture",
        "level": "INFO",
        "filename": str(log_file),
        "mode": "a",
        "encoding": "utf-8",
    }
    loggers = config.setdefault("loggers", {})
    vllm_logger = loggers.setdefault("vllm", {"level": "INFO", "propagate": False})
    handlers = list(vllm_logger.get("handlers", []))
    if "aot_capture" not in handlers:
        handlers.append("aot_capture")
    vllm_logger["handlers"] = handlers
    # The capture needs INFO records even when the console shows only warnings.
    if logging.getLevelName(str(vllm_logger.get("level", "INFO")).upper()) > logging.INFO:
        vllm_logger["level"] = "INFO"
    _capture_torch_cache_lines(config)
    return config


# Inductor's and AOTAutograd's own verdicts ("fx graph cache hit for key ..."), logged at
# INFO by whichever process compiles: with several ranks, the only evidence of what each
# rank's worker process loaded or compiled.
TORCH_CACHE_LOGGERS = (
    "torch._inductor.codecache",
    "torch._functorch._aot_autograd.autograd_cache",
)


def _capture_torch_cache_lines(config: dict[str, Any]) -> None:
    handlers = config["handlers"]
    # Not propagated (torch's own handlers would print every INFO line); warnings still
    # reach the console through this handler.
    handlers.setdefault(
        "aot_torch_console",
        {"class": "logging.StreamHandler", "level": "WARNING", "stream": "ext://sys.stderr"},
    )
    loggers = config["loggers"]
    for name in TORCH_CACHE_LOGGERS:
        loggers.setdefault(
            name,
            {"handlers": ["aot_capture", "aot_torch_console"], "level": "INFO", "propagate": False},
        )


class LogCapture:
    """Routes ``vllm`` log records into ``log_file`` for the lifetime of one engine."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self.config_file = log_file.with_suffix(".logging.json")
        self.enabled = os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0"
        self.reason = (
            "" if self.enabled else ("VLLM_CONFIGURE_LOGGING=0: vLLM's log lines were not captured")
        )

    def prepare(self) -> Path | None:
        """Write the logging config file every engine process applies; None when off.

        ``engine_env.log_capture`` names it in ``VLLM_LOGGING_CONFIG_PATH`` before vLLM is
        imported. A config the user named there is kept, with the capture added.
        """
        if not self.enabled:
            return None
        base = None
        user = os.environ.get(EngineVar.VLLM_LOGGING_CONFIG_PATH.value)
        if user and Path(user).resolve() != self.config_file.resolve():
            try:
                base = json.loads(Path(user).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                base = None  # vLLM itself reports an unreadable config file
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self.config_file.write_text(
            json.dumps(logging_config(self.log_file, base=base), indent=1), encoding="utf-8"
        )
        return self.config_file

    def attach_in_process(self) -> None:
        """Make sure this process's ``vllm`` logger writes to the file.

        Releases that configure logging only at import miss the config file when vLLM
        was imported earlier; a handler added here covers them, and is not added twice.
        """
        if not self.enabled:
            return
        logger = logging.getLogger("vllm")
        target = os.path.abspath(self.log_file)
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
                return
        handler = logging.FileHandler(target, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def detach(self) -> None:
        """Stop writing this process's records to the file."""
        logger = logging.getLogger("vllm")
        target = os.path.abspath(self.log_file)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
                logger.removeHandler(handler)
                handler.close()

    def records(self, since: float = 0.0) -> list[LogRecordLine]:
        """Records written so far at or after ``since`` (wall-clock seconds)."""
        return [r for r in read_records(self.log_file) if r.time >= since]


def read_records(path: Path) -> list[LogRecordLine]:
    """Parse a capture file; lines that are not ours are ignored."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return list(_parse(text))


def _parse(text: str) -> Iterator[LogRecordLine]:
    for chunk in text.split(_MARK)[1:]:
        parts = chunk.split("\x1f", 4)
        if len(parts) != 5:
            continue
        try:
            created, pid = float(parts[0]), int(parts[1])
        except ValueError:
            continue
        yield LogRecordLine(
            time=created, pid=pid, level=parts[2], logger=parts[3], message=parts[4].rstrip("\n")
        )


def first(records: list[LogRecordLine], pattern: str) -> tuple[LogRecordLine, re.Match[str]] | None:
    """The first record whose message matches ``pattern``, with the match."""
    rx = re.compile(pattern)
    for record in records:
        match = rx.search(record.message)
        if match:
            return record, match
    return None


def last(records: list[LogRecordLine], pattern: str) -> tuple[LogRecordLine, re.Match[str]] | None:
    """The last record whose message matches ``pattern``, with the match."""
    rx = re.compile(pattern)
    for record in reversed(records):
        match = rx.search(record.message)
        if match:
            return record, match
    return None
