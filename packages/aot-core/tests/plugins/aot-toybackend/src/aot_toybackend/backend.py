"""``ToyCompiler``: the toy backend, registered as ``toy`` in ``aot.backends``.

``spec.cache_dir`` is used as aot-core's ``CompileSpec`` documents it: the table is
written below it, and loaded back only from a verified artifact (``artifact_root`` ->
``verify_for_load``); with no ``cache_dir``, ``compile_model_aot`` keeps the table in
aot's own store through aot-core's compile-and-publish workflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from aot_core import artifacts
from aot_core.compiler import Availability, Compiler
from aot_core.errors import SpecError
from aot_core.spec import CompileSpec
from aot_core.stats import CacheOutcome, OptimizationStats

from aot_toybackend.bigram import Bigram, read_bigram
from aot_toybackend.compiled import ToyCompiledModel
from aot_toybackend.options import ToyOptions
from aot_toybackend.table import PIN_NAME, TABLE_FORMAT, read_table, table_path, write_table


class ToyCompiler(Compiler):
    """Bigram decoding from a Llama's embeddings; compiling precomputes the whole table."""

    name: ClassVar[str] = "toy"
    description: ClassVar[str] = "bigram lookup table (test-only)"
    priority: ClassVar[int] = 1
    distribution: ClassVar[str] = "aot-toybackend"
    options_class: ClassVar[type[ToyOptions]] = ToyOptions

    @classmethod
    def availability(cls) -> Availability:
        """Pure Python: it runs wherever aot-core does."""
        return Availability(usable=True)

    @classmethod
    def pins(cls) -> dict[str, str | None]:
        """A table is read back only by code that knows its layout."""
        return {PIN_NAME: TABLE_FORMAT}

    def compile_model(self, model: Any, spec: CompileSpec | None = None) -> ToyCompiledModel:
        """Eager (compile_mode "none"): rows on demand; else the table, from a verified
        artifact in ``spec.cache_dir`` when there is one, else worked out in memory."""
        compiled = self._build(model, spec or self.spec, persist=False)
        self._remember(compiled)
        return compiled

    def compile_model_aot(
        self, model: Any, example_inputs: Any, spec: CompileSpec | None = None
    ) -> ToyCompiledModel:
        """Work out the table and keep it below ``spec.cache_dir`` for later processes."""
        spec = spec or self.spec
        if spec.cache_dir is None:
            spec = self._own_store(model, spec)
        compiled = self._build(model, spec, persist=True)
        if example_inputs:
            compiled.generate(list(example_inputs), None)  # proves the table on real prompts
        self._remember(compiled)
        return compiled

    def _own_store(self, model: Any, spec: CompileSpec) -> CompileSpec:
        """Publish the table as an artifact of aot's default store; the spec pointing there."""
        from aot_core.cli.workflow import compile_into

        store = artifacts.ArtifactStore()
        key = artifacts.entry_key(
            backend=self.name, backend_version=self.version(), model=str(model), spec=spec
        )
        compile_into(
            dest=store.path(key),
            key=key,
            backend=self.name,
            model=Path(model),
            spec=spec,
            example_inputs=None,
            force=False,
            progress=lambda _message: None,
        )
        return spec.replace(cache_dir=str(store.path(key) / artifacts.FILES_DIR))

    def _build(self, model: Any, spec: CompileSpec, *, persist: bool) -> ToyCompiledModel:
        t_start = time.perf_counter()
        options = self.options_class.validate(spec)
        if options.fail == "compile" and spec.compiles:
            raise RuntimeError("toy backend: compile failure asked for (backend_options.fail)")
        if not isinstance(model, (str, Path)):
            raise SpecError("model: the toy backend takes a model directory", field="model")
        bigram = read_bigram(model)
        if not spec.compiles:
            rows: dict[int, int] = {}

            def lookup(token: int) -> int:
                if token not in rows:
                    rows[token] = bigram.next_token(token)
                return rows[token]

            disabled = CacheOutcome(status="disabled")
            return self._model(bigram, lookup, t_start, disabled, None, options=options)
        t0 = time.perf_counter()
        table, outcome = self._table(bigram, spec, persist=persist)
        outcome = CacheOutcome(
            status=outcome.status,
            reason=outcome.reason,
            load_time_s=time.perf_counter() - t0 if outcome.status == "hit" else None,
            path=outcome.path,
        )
        compile_s = time.perf_counter() - t0
        return self._model(bigram, table.__getitem__, t_start, outcome, compile_s, options=options)

    def _table(
        self, bigram: Bigram, spec: CompileSpec, *, persist: bool
    ) -> tuple[list[int], CacheOutcome]:
        """The table from a verified artifact, or worked out (and written when ``persist``)."""
        path = table_path(spec.cache_dir, bigram.digest) if spec.cache_dir else None
        root = artifacts.artifact_root(spec.cache_dir)
        if path is not None and root is not None:
            # Only an artifact whose manifest vouches for every file is read.
            artifacts.verify_for_load(root, backend=self.name)
            table = read_table(path, bigram.digest)
            if table is not None:
                return table, CacheOutcome(status="hit", reason="verified artifact", path=str(path))
        table = bigram.table()
        if persist and path is not None:
            write_table(path, bigram.digest, table)
        where = str(path) if path is not None else None
        return table, CacheOutcome(status="miss", reason="table worked out", path=where)

    def _model(
        self,
        bigram: Bigram,
        lookup: Any,
        t_start: float,
        cache: CacheOutcome,
        compile_s: float | None,
        *,
        options: ToyOptions,
    ) -> ToyCompiledModel:
        stats = OptimizationStats(
            backend=self.name,
            backend_version=self.version(),
            device="cpu",
            compile_mode="bigram table" if compile_s is not None else "eager",
            compile_time_s=compile_s,
            cache=cache,
            startup_s=time.perf_counter() - t_start,
            resolved_config={"vocab_size": len(bigram.embed), "table": cache.path},
        )
        return ToyCompiledModel(
            next_token=lookup,
            vocab_size=len(bigram.embed),
            eos_ids=bigram.eos_ids,
            stats=stats,
            fail_on_close=options.fail == "close",
        )
