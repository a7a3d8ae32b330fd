"""``EnhancedAOTCompiler``: turn a static-KV step into fast prefill/decode callables.

Tiers, best first: a verified AOTInductor package (no compiling at all), torch.compile with
a persistent cache keyed on everything that invalidates it, then eager. Each fall-back
records why it happened, so stats say what a start really got.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from aot_core.errors import ArtifactError
from aot_core.stats import CacheOutcome

from aot_legacy.decoder import StaticKVDecoder
from aot_legacy.environment import environment, stable_hash
from aot_legacy.hf_adapter import config_hash
from aot_legacy.options import MIN_BUCKET, StepPlan
from aot_legacy.packages import build_packages, load_packages, read_manifest

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(input_ids, positions, last_index) -> logits``, with the KV cache bound."""

PORTABLE_CACHE = "portable_cache.bin"


@dataclass(frozen=True, kw_only=True)
class StepRunners:
    """The prefill and decode callables of one model, and how they were obtained."""

    prefill: StepFn
    """Runs a prompt batch ``[B, T]``; returns logits at each row's last index."""

    decode: StepFn
    """Runs one token per row ``[B, 1]``; returns next-token logits."""

    tier: str
    """"package", "compile" or "eager": what actually runs."""

    cache: CacheOutcome
    """Whether compiled code came from a cache, and the evidence."""

    compile_time_s: float | None
    """Seconds spent compiling, or loading compiled code (None for eager)."""

    cache_dir: Path | None
    """The keyed cache directory in use."""

    notes: tuple[str, ...] = ()
    """Fall-backs and warnings, in order."""


def _eager(step: StaticKVDecoder, kv: Sequence[torch.Tensor]) -> StepFn:
    def run(ids: torch.Tensor, pos: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return step(ids, pos, last, *kv)

    return run


@contextlib.contextmanager
def _inductor_cache(directory: Path) -> Iterator[None]:
    """Point Inductor (and Triton, which nests under it) at ``directory`` while compiling."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    ind = counters["inductor"]
    return {
        "hit": int(ind.get("fxgraph_cache_hit", 0)),
        "miss": int(ind.get("fxgraph_cache_miss", 0)),
        "bypass": int(ind.get("fxgraph_cache_bypass", 0)),
    }


class EnhancedAOTCompiler:
    """torch.compile with persistent keyed caches, AOTInductor packages, and fall-backs."""

    def __init__(
        self,
        *,
        cache_root: Path | None = None,
        persistent_cache: bool = True,
        use_packages: bool = True,
        package_dir: Path | None = None,
    ) -> None:
        if cache_root is None:
            from aot_core.spec import CompileSpec

            from aot_legacy.options import default_cache_root

            cache_root = default_cache_root(CompileSpec())
        self.cache_root = cache_root
        self.persistent_cache = persistent_cache
        self.use_packages = use_packages
        self.package_dir = package_dir
        self._tmpdirs: list[Path] = []

    # ------------------------------------------------------------------ keys

    @staticmethod
    def key_data(step: StaticKVDecoder, plan: StepPlan) -> dict[str, Any]:
        """What besides the environment decides whether compiled code can be reused."""
        return {
            "model_config": config_hash(dict(step.config_dict)),
            "step_class": f"{type(step).__module__}.{type(step).__qualname__}",
            "dtype": plan.dtype,
            "max_batch": plan.max_batch,
            "max_seq": plan.max_seq,
            "compile_mode": plan.compile_mode,
        }

    def cache_dir_for(self, step: StaticKVDecoder, plan: StepPlan, device: torch.device) -> Path:
        """The keyed directory: one per torch, device/ISA, model config, dtype and shapes."""
        key = stable_hash({"env": environment(device), "key": self.key_data(step, plan)})
        return self.cache_root / key

    # ------------------------------------------------------------------ tiers

    def prepare(
        self,
        step: StaticKVDecoder,
        plan: StepPlan,
        kv: Sequence[torch.Tensor],
        *,
        build: bool = False,
        manual_cuda_graphs: bool = False,
    ) -> StepRunners:
        """Best available runners: package, then compile, then eager.

        ``build`` (compile_model_aot) exports and packages the steps when no compatible
        package exists; otherwise an existing package is loaded when ``use_packages``.
        """
        device = kv[0].device
        if plan.compile_mode == "none":
            eager = _eager(step, kv)
            return StepRunners(
                prefill=eager,
                decode=eager,
                tier="eager",
                cache=CacheOutcome(status="disabled", reason="compile_mode is 'none'"),
                compile_time_s=None,
                cache_dir=None,
            )
        env = environment(device)
        key = self.key_data(step, plan)
        cache_dir = self.cache_dir_for(step, plan, device)
        pkg_dir = self.package_dir if self.package_dir is not None else cache_dir / "aoti"
        notes: list[str] = []
        refused = ""

        def load() -> StepRunners:
            t0 = time.perf_counter()
            prefill, decode = load_packages(
                pkg_dir,
                plan=plan,
                kv=kv,
                environment=env,
                key_data=key,
                single_threaded=manual_cuda_graphs,
            )
            load_s = time.perf_counter() - t0
            return StepRunners(
                prefill=prefill,
                decode=decode,
                tier="package",
                cache=CacheOutcome(
                    status="hit",
                    reason="loaded verified AOTInductor packages; nothing compiled",
                    load_time_s=load_s,
                    path=str(pkg_dir),
                ),
                compile_time_s=load_s,
                cache_dir=cache_dir,
            )

        if build or self.use_packages:
            has_package = (pkg_dir / "manifest.json").exists()
            if has_package:
                try:
                    return load()
                except ArtifactError as exc:
                    refused = f"AOTInductor package refused: {exc}"
                    notes.append(refused)
            if build:
                try:
                    built_s = build_packages(step, plan, kv, pkg_dir, environment=env, key_data=key)
                    runners = load()
                    reason = "first compile: built AOTInductor packages"
                    if refused:
                        reason = f"rebuilt AOTInductor packages ({refused})"
                    return StepRunners(
                        prefill=runners.prefill,
                        decode=runners.decode,
                        tier="package",
                        cache=CacheOutcome(status="miss", reason=reason, path=str(pkg_dir)),
                        compile_time_s=built_s + (runners.compile_time_s or 0.0),
                        cache_dir=cache_dir,
                        notes=tuple(notes),
                    )
                except Exception as exc:  # no C++ compiler, export failure, ...
                    notes.append(
                        f"AOTInductor packaging failed ({type(exc).__name__}: "
                        f"{_first_line(exc)}); using torch.compile"
                    )
        try:
            return self._compile(
                step,
                plan,
                kv,
                cache_dir=cache_dir,
                manual_cuda_graphs=manual_cuda_graphs,
                notes=notes,
                refused=refused,
            )
        except Exception as exc:  # InductorError, dynamo errors: run eager, say why
            reason = f"torch.compile failed ({type(exc).__name__}: {_first_line(exc)})"
            notes.append(f"{reason}; running eager")
            eager = _eager(step, kv)
            return StepRunners(
                prefill=eager,
                decode=eager,
                tier="eager",
                cache=CacheOutcome(status="disabled", reason=reason),
                compile_time_s=None,
                cache_dir=cache_dir,
                notes=tuple(notes),
            )

    def _compile(
        self,
        step: StaticKVDecoder,
        plan: StepPlan,
        kv: Sequence[torch.Tensor],
        *,
        cache_dir: Path,
        manual_cuda_graphs: bool,
        notes: list[str],
        refused: str,
    ) -> StepRunners:
        import torch._dynamo

        if self.persistent_cache:
            inductor_dir = cache_dir / "inductor"
        else:
            inductor_dir = Path(tempfile.mkdtemp(prefix="aot-legacy-inductor-"))
            self._tmpdirs.append(inductor_dir)
        was_empty = not inductor_dir.exists() or not any(inductor_dir.iterdir())
        inductor_dir.mkdir(parents=True, exist_ok=True)
        portable = cache_dir / PORTABLE_CACHE
        loaded_portable = False
        if (
            self.persistent_cache
            and was_empty
            and portable.is_file()
            and hasattr(torch.compiler, "load_cache_artifacts")
        ):
            with _inductor_cache(inductor_dir):
                torch.compiler.load_cache_artifacts(portable.read_bytes())
            loaded_portable = True
            notes.append(f"loaded portable cache artifacts from {portable}")

        mode: str | None = None if plan.compile_mode == "default" else plan.compile_mode
        if mode == "max-autotune" and manual_cuda_graphs:
            # Our own per-bucket graphs capture the step; Inductor's would nest inside them.
            mode = "max-autotune-no-cudagraphs"
        compiled = torch.compile(step, mode=mode, fullgraph=True)
        max_batch, max_seq = plan.max_batch, plan.max_seq

        def mark(ids: torch.Tensor, pos: torch.Tensor, last: torch.Tensor) -> None:
            if max_batch > MIN_BUCKET:
                for t in (ids, pos, last):
                    torch._dynamo.maybe_mark_dynamic(t, 0)
            if ids.shape[1] > 1:
                torch._dynamo.maybe_mark_dynamic(ids, 1)
                torch._dynamo.maybe_mark_dynamic(pos, 1)

        def run(ids: torch.Tensor, pos: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
            mark(ids, pos, last)
            return compiled(ids, pos, last, *kv)  # type: ignore[no-any-return]

        before = _counters()
        t0 = time.perf_counter()
        device = kv[0].device
        with _inductor_cache(inductor_dir), torch.no_grad():
            # One prefill and one decode shape each compile a graph dynamic in batch (and
            # prompt length), so later batches and prompts in range do not recompile.
            for seq in (min(8, max_seq), 1):
                ids = torch.zeros((MIN_BUCKET, seq), dtype=torch.long, device=device)
                pos = torch.arange(seq, device=device).expand(MIN_BUCKET, seq).contiguous()
                last = torch.full((MIN_BUCKET,), seq - 1, dtype=torch.long, device=device)
                run(ids, pos, last)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - t0
        after = _counters()
        hits = after["hit"] - before["hit"]
        misses = after["miss"] - before["miss"]
        prefix = f"{refused}; " if refused else ""
        if not self.persistent_cache:
            cache = CacheOutcome(status="disabled", reason=f"{prefix}persistent_cache is false")
        elif hits and not misses:
            cache = CacheOutcome(
                status="hit",
                reason=f"{prefix}torch.compile found all {hits} graphs in the persistent cache"
                + (" (seeded from portable artifacts)" if loaded_portable else ""),
                load_time_s=compile_s,
                path=str(inductor_dir),
            )
        elif misses:
            why = (
                "first compile for this key"
                if was_empty and not loaded_portable
                else (f"{misses} graphs not in the cache" + (f", {hits} reused" if hits else ""))
            )
            cache = CacheOutcome(status="miss", reason=prefix + why, path=str(inductor_dir))
        else:
            cache = CacheOutcome(
                status="unknown",
                reason=f"{prefix}Inductor reported no cache lookups (bypassed)",
                path=str(inductor_dir),
            )
        if misses and self.persistent_cache and hasattr(torch.compiler, "save_cache_artifacts"):
            self._save_portable(portable, notes)
        return StepRunners(
            prefill=run,
            decode=run,
            tier="compile",
            cache=cache,
            compile_time_s=compile_s,
            cache_dir=cache_dir,
            notes=tuple(notes),
        )

    @staticmethod
    def _save_portable(path: Path, notes: list[str]) -> None:
        try:
            result = torch.compiler.save_cache_artifacts()
        except Exception as exc:  # a feature of uneven maturity across torch releases
            notes.append(f"portable cache artifacts not saved ({_first_line(exc)})")
            return
        if result is None:
            return
        blob = result[0]
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, path)

    def close(self) -> None:
        """Remove temporary cache directories made for ``persistent_cache=False``."""
        for d in self._tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmpdirs.clear()


def package_info(directory: Path) -> dict[str, Any] | None:
    """The manifest of a package directory, or None when there is none."""
    try:
        return read_manifest(directory)
    except ArtifactError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
