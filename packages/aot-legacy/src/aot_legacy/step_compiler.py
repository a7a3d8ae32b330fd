"""``StepCompiler``: turn a static-KV step into fast prefill/decode callables.

Tiers, best first: a verified AOTInductor package (no compiling at all), torch.compile with
a persistent cache keyed on everything that invalidates it, then eager. Each fall-back
records why it happened, so stats say what a start really got.

Both compiled tiers take the weights as inputs (``weights.py``): nothing compiled holds
them, so one cache entry serves every checkpoint of an architecture. When the cache lives
inside a published aot artifact (``read_only``), the caller has verified it against its
manifest; this class then never writes into it: torch.compile works on a private copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from aot_core.env_patch import patched_env
from aot_core.errors import ArtifactError
from aot_core.stats import CacheOutcome

from aot_legacy.decoder import StaticKVDecoder
from aot_legacy.environment import environment, stable_hash
from aot_legacy.hf_adapter import config_hash
from aot_legacy.options import MIN_BUCKET, STEP_FORMAT, StepPlan
from aot_legacy.package_build import DISK_FULL_ERRNOS
from aot_legacy.packages import build_packages, load_packages
from aot_legacy.weights import WeightsAsInputs, step_tensors

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(input_ids, positions, last_index) -> logits``, with the KV cache bound."""

PORTABLE_CACHE = "portable_cache.bin"
WEIGHT_BINDING = "inputs"
"""How compiled code gets the weights: as call inputs, never embedded (stats say so)."""


@dataclass(frozen=True, kw_only=True)
class StepRunners:
    """The prefill and decode callables of one model, and how they were obtained."""

    prefill: StepFn
    """Runs a prompt batch ``[B, T]``; returns logits ``[B, K, vocab]`` at the K positions
    ``last_index`` ``[B, K]`` names per row."""

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


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _raise_if_disk_full(exc: BaseException, where: Path) -> None:
    """Re-raise a full disk as ``OSError(ENOSPC)`` (the ``aot`` command's DISK_FULL exit)
    instead of falling back to a slower tier that would fill the same disk."""
    if not disk_full(exc):
        return
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        raise exc
    raise OSError(errno.ENOSPC, "No space left on device", str(where)) from exc


def _inductor_cache(directory: Path) -> contextlib.AbstractContextManager[None]:
    """Point Inductor (and Triton, which nests under it) at ``directory`` while compiling
    (aot-core's one environment writer sets it and puts the old value back)."""
    return patched_env({"TORCHINDUCTOR_CACHE_DIR": str(directory)})


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    ind = counters["inductor"]
    return {
        "hit": int(ind.get("fxgraph_cache_hit", 0)),
        "miss": int(ind.get("fxgraph_cache_miss", 0)),
        "bypass": int(ind.get("fxgraph_cache_bypass", 0)),
    }


class StepCompiler:
    """torch.compile with persistent keyed caches, AOTInductor packages, and fall-backs."""

    def __init__(
        self,
        *,
        cache_root: Path,
        persistent_cache: bool = True,
        use_packages: bool = True,
        package_dir: Path | None = None,
        read_only: bool = False,
    ) -> None:
        self.cache_root = cache_root
        self.persistent_cache = persistent_cache
        self.use_packages = use_packages
        self.package_dir = package_dir
        self.read_only = read_only
        self._tmpdirs: list[Path] = []

    # ------------------------------------------------------------------ keys

    @staticmethod
    def key_data(step: StaticKVDecoder, plan: StepPlan) -> dict[str, Any]:
        """What besides the environment decides whether compiled code can be reused.

        No weights: compiled code takes them as inputs, so it fits every checkpoint of
        the architecture the config describes.
        """
        return {
            "model_config": config_hash(dict(step.config_dict)),
            "step_class": f"{type(step).__module__}.{type(step).__qualname__}",
            "dtype": plan.dtype,
            "max_batch": plan.max_batch,
            "max_seq": plan.max_seq,
            "compile_mode": plan.compile_mode,
            "weights": WEIGHT_BINDING,
            "step_format": STEP_FORMAT,
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
        cache_dir = self.cache_dir_for(step, plan, kv[0].device)
        notes: list[str] = []
        refused = ""
        if build or self.use_packages:
            runners, refused = self._packages(
                step,
                plan,
                kv,
                build=build,
                cache_dir=cache_dir,
                notes=notes,
                single_threaded=manual_cuda_graphs,
            )
            if runners is not None:
                return runners
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
            _raise_if_disk_full(exc, cache_dir)
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

    def _packages(
        self,
        step: StaticKVDecoder,
        plan: StepPlan,
        kv: Sequence[torch.Tensor],
        *,
        build: bool,
        cache_dir: Path,
        notes: list[str],
        single_threaded: bool,
    ) -> tuple[StepRunners | None, str]:
        """Load (or build, then load) the packages; None and the refusal when they can't be."""
        pkg_dir = self.package_dir if self.package_dir is not None else cache_dir / "aoti"

        def load() -> StepRunners:
            return self._load_packages(
                pkg_dir, step, plan, kv, cache_dir=cache_dir, single_threaded=single_threaded
            )

        refused = ""
        if (pkg_dir / "manifest.json").exists():
            try:
                return dataclasses.replace(load(), notes=tuple(notes)), ""
            except ArtifactError as exc:
                refused = f"AOTInductor package refused: {exc}"
                notes.append(refused)
        if not build:
            return None, refused
        if self.read_only:
            notes.append(
                "the published artifact holds no usable AOTInductor package for this model "
                "and spec; it is never written to, so torch.compile runs on a private copy"
            )
            return None, refused
        try:
            env, key = environment(kv[0].device), self.key_data(step, plan)
            built_s = build_packages(step, plan, kv, pkg_dir, environment=env, key_data=key)
            runners = load()
        except Exception as exc:  # no C++ compiler, export failure, a package that won't load
            _raise_if_disk_full(exc, pkg_dir)
            notes.append(
                f"AOTInductor packaging failed ({type(exc).__name__}: "
                f"{_first_line(exc)}); using torch.compile"
            )
            return None, refused
        reason = "first compile: built weight-free AOTInductor packages"
        if refused:
            reason = f"rebuilt AOTInductor packages ({refused})"
        built = dataclasses.replace(
            runners,
            cache=CacheOutcome(status="miss", reason=reason, path=str(pkg_dir)),
            compile_time_s=built_s + (runners.compile_time_s or 0.0),
            notes=tuple(notes),
        )
        return built, refused

    def _load_packages(
        self,
        pkg_dir: Path,
        step: StaticKVDecoder,
        plan: StepPlan,
        kv: Sequence[torch.Tensor],
        *,
        cache_dir: Path,
        single_threaded: bool,
    ) -> StepRunners:
        """Verify and load the packages in ``pkg_dir``, the weights bound as inputs."""
        t0 = time.perf_counter()
        prefill, decode = load_packages(
            pkg_dir,
            plan=plan,
            kv=kv,
            weights=step_tensors(step),
            environment=environment(kv[0].device),
            key_data=self.key_data(step, plan),
            single_threaded=single_threaded,
        )
        load_s = time.perf_counter() - t0
        return StepRunners(
            prefill=prefill,
            decode=decode,
            tier="package",
            cache=CacheOutcome(
                status="hit",
                reason="loaded verified weight-free AOTInductor packages; nothing compiled",
                load_time_s=load_s,
                path=str(pkg_dir),
            ),
            compile_time_s=load_s,
            cache_dir=cache_dir,
        )

    def _inductor_dir(self, cache_dir: Path) -> tuple[Path, bool]:
        """Where Inductor's cache goes, and whether it starts empty.

        A published artifact is read-only to us: its cache is copied to a private
        directory (compiled code, not weights, so it is small) and used there.
        """
        if not self.persistent_cache or self.read_only:
            private = Path(tempfile.mkdtemp(prefix="aot-legacy-inductor-"))
            self._tmpdirs.append(private)
            source = cache_dir / "inductor"
            if self.read_only and self.persistent_cache and source.is_dir():
                shutil.copytree(source, private, dirs_exist_ok=True, symlinks=True)
            return private, not any(private.iterdir())
        inductor_dir = cache_dir / "inductor"
        was_empty = not inductor_dir.exists() or not any(inductor_dir.iterdir())
        inductor_dir.mkdir(parents=True, exist_ok=True)
        return inductor_dir, was_empty

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
        inductor_dir, was_empty = self._inductor_dir(cache_dir)
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

        run = self._compiled_runner(step, plan, kv, manual_cuda_graphs=manual_cuda_graphs)
        before = _counters()
        t0 = time.perf_counter()
        device = kv[0].device
        with _inductor_cache(inductor_dir), torch.no_grad():
            # One prefill and one decode shape each compile a graph dynamic in batch (and
            # prompt length, and positions read), so later calls in range do not recompile.
            for seq, picks in (
                (min(8, plan.max_seq), (MIN_BUCKET, MIN_BUCKET)),
                (1, (MIN_BUCKET,)),
            ):
                ids = torch.zeros((MIN_BUCKET, seq), dtype=torch.long, device=device)
                pos = torch.arange(seq, device=device).expand(MIN_BUCKET, seq).contiguous()
                last = torch.full(picks, seq - 1, dtype=torch.long, device=device)
                run(ids, pos, last)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - t0
        after = _counters()
        hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
        cache = self._outcome(
            hits=hits,
            misses=misses,
            refused=refused,
            fresh=was_empty and not loaded_portable,
            loaded_portable=loaded_portable,
            load_s=compile_s,
            path=inductor_dir,
        )
        saves = self.persistent_cache and not self.read_only
        if misses and saves and hasattr(torch.compiler, "save_cache_artifacts"):
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
    def _compiled_runner(
        step: StaticKVDecoder,
        plan: StepPlan,
        kv: Sequence[torch.Tensor],
        *,
        manual_cuda_graphs: bool,
    ) -> StepFn:
        """torch.compile of the step with its weights as inputs, KV cache and weights bound."""
        import torch._dynamo

        names, tensors = step_tensors(step)
        wrapper = WeightsAsInputs(step, num_kv=len(kv), names=names)
        mode: str | None = None if plan.compile_mode == "default" else plan.compile_mode
        if mode == "max-autotune" and manual_cuda_graphs:
            # Our own per-bucket graphs capture the step; Inductor's would nest inside them.
            mode = "max-autotune-no-cudagraphs"
        compiled = torch.compile(wrapper, mode=mode, fullgraph=True)
        bound = [*kv, *tensors]
        max_batch = plan.max_batch

        def run(ids: torch.Tensor, pos: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
            if max_batch > MIN_BUCKET:
                for t in (ids, pos, last):
                    torch._dynamo.maybe_mark_dynamic(t, 0)
            if ids.shape[1] > 1:
                torch._dynamo.maybe_mark_dynamic(ids, 1)
                torch._dynamo.maybe_mark_dynamic(pos, 1)
            if last.dim() == 2:
                torch._dynamo.maybe_mark_dynamic(last, 1)
            return compiled(ids, pos, last, *bound)  # type: ignore[no-any-return]

        return run

    def _outcome(
        self,
        *,
        hits: int,
        misses: int,
        refused: str,
        fresh: bool,
        loaded_portable: bool,
        load_s: float,
        path: Path,
    ) -> CacheOutcome:
        prefix = f"{refused}; " if refused else ""
        if not self.persistent_cache:
            return CacheOutcome(status="disabled", reason=f"{prefix}persistent_cache is false")
        if hits and not misses:
            return CacheOutcome(
                status="hit",
                reason=f"{prefix}torch.compile found all {hits} graphs in the persistent cache"
                + (" (seeded from portable artifacts)" if loaded_portable else ""),
                load_time_s=load_s,
                path=str(path),
            )
        if misses:
            why = (
                "first compile for this key"
                if fresh
                else (f"{misses} graphs not in the cache" + (f", {hits} reused" if hits else ""))
            )
            return CacheOutcome(status="miss", reason=prefix + why, path=str(path))
        return CacheOutcome(
            status="unknown",
            reason=f"{prefix}Inductor reported no cache lookups (bypassed)",
            path=str(path),
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
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the private cache directories (``persistent_cache=False``, read-only)."""
        for d in self._tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmpdirs.clear()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
