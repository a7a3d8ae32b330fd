"""One evaluation job in this process: lm-eval's options, tasks loaded first, then the model
(eager or from aot's cache), lm-eval's ``simple_evaluate``, and results that carry aot's stats."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aot_core.compiler import CompiledModel
from aot_core.evaluation.errors import EvalUsageError, LMEvalOptionsError
from aot_core.evaluation.model_args import EvalModelConfig
from aot_core.evaluation.startup import StartRecord, run_with_model

if TYPE_CHECKING:
    from aot_core.evaluation.task_files import TaskYamls
    from aot_core.evaluation.workload import JobRequests

RESULTS_NAME = "results.json"
NOISE_NOTE = (
    "the built-in tiny Llama has random weights and a byte-level tokenizer: its scores are "
    "noise, useful only to compare runs (eager vs compiled), never as accuracy"
)


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """Everything one job needs."""

    config: EvalModelConfig
    """The model, backend and spec."""

    output: Path | None = None
    """Directory for ``results.json`` and the samples files; None writes nothing."""

    cache_dir: str | None = None
    """aot's artifact store root (None: ``$AOT_CACHE_DIR`` or ~/.cache/aot)."""

    started_at: float = field(default_factory=time.perf_counter)
    """``perf_counter`` at the start of the command, for the job's wall time."""


def lm_eval_config(argv: Sequence[str]) -> Any:
    """lm-eval's own ``EvaluatorConfig`` from its ``run`` options (its parser, its checks)."""
    from lm_eval._cli.run import Run
    from lm_eval.config.evaluate_config import EvaluatorConfig

    parser = argparse.ArgumentParser(prog="aot eval ... --", add_help=False)
    Run.create(parser.add_subparsers(dest="command"))
    namespace = parser.parse_args(["run", "--model", "aot", *argv])
    try:
        return EvaluatorConfig.from_cli(namespace)
    except ValueError as exc:
        raise LMEvalOptionsError(f"lm-eval refused the options: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class PreparedTasks:
    """A job's tasks, checked and built (their data read) before any engine starts."""

    config: Any
    """lm-eval's ``EvaluatorConfig``, its task names resolved."""

    manager: Any
    """lm-eval's ``TaskManager`` that resolved them."""

    tasks: list[Any]
    """The top-level tasks and groups, ready for ``simple_evaluate``."""

    requests: JobRequests | None = None
    """What the job sends (``workload.count_requests``), which sizes the KV cache; None
    when it could not be counted."""


def check_inputs(argv: Sequence[str]) -> tuple[Any, TaskYamls]:
    """The checks that need no task index (milliseconds for local tasks): lm-eval's options,
    the limit, every task YAML, and the data of the tasks named directly. Returns lm-eval's
    ``EvaluatorConfig`` and the parsed YAMLs."""
    from aot_core.evaluation.limit import check_limit
    from aot_core.evaluation.task_files import check_task_data, check_task_yamls
    from aot_core.evaluation.tasks import task_names

    cfg = lm_eval_config(argv)
    if cfg.limit is not None:
        try:
            check_limit(cfg.limit)
        except ValueError as exc:
            raise EvalUsageError(f"--limit: {exc}") from None
    yamls = check_task_yamls(cfg.include_path, task_names(cfg))
    for source in yamls.requested:
        check_task_data(source)
    return cfg, yamls


def prepare_tasks(argv: Sequence[str], progress: Callable[[str], None]) -> PreparedTasks:
    """lm-eval's options and the tasks they name, each checked (``check_inputs``, then the
    data of tasks reached through groups and tags, then at least one document per task) and
    built, their data read. Starts no engine."""
    from aot_core.evaluation.task_files import check_task_data, task_sources
    from aot_core.evaluation.tasks import load_tasks, resolve_tasks
    from aot_core.evaluation.workload import count_requests

    cfg, yamls = check_inputs(argv)
    manager = resolve_tasks(cfg, yamls)
    sources = task_sources(manager, cfg.tasks, yamls)
    checked = {s.name for s in yamls.requested}
    for source in sources:
        if source.name not in checked:  # those of groups and tags, and built-in tasks
            check_task_data(source)
    tasks, every_task = load_tasks(manager, cfg.tasks, sources)
    names = [getattr(t, "task_name", None) or str(t) for t in tasks]
    requests = count_requests(every_task, cfg.limit)
    counted = f" ({requests})" if requests is not None else ""
    progress(f"tasks ready: {', '.join(names)}{counted}")
    return PreparedTasks(config=cfg, manager=manager, tasks=tasks, requests=requests)


def run_job(
    request: JobRequest,
    prepared: PreparedTasks,
    tokenizer: Any,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run the job on ``prepared`` tasks and return lm-eval's results with an ``aot`` section."""
    marks: dict[str, float] = {}

    def body(model: CompiledModel) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        from aot_core.evaluation.lm import AotLM

        marks["ready"] = time.perf_counter()
        lm = AotLM.around(model, tokenizer, request.config)
        results = evaluate(lm, prepared)
        marks["evaluated"] = time.perf_counter()
        return results, model.stats.to_dict(), lm.counters.to_dict()

    (results, stats, counters), start = run_with_model(
        request.config,
        body,
        cache_dir=request.cache_dir,
        progress=progress,
        requests=prepared.requests,
    )
    results["aot"] = _aot_section(request, stats, counters, start, marks)
    return results


def evaluate(lm: Any, prepared: PreparedTasks, *, model_args: Any = None) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``prepared`` on ``lm``: an LM object, or the name of
    one of lm-eval's own models, which it builds from ``model_args``."""
    from lm_eval import simple_evaluate

    cfg = prepared.config
    built_here: dict[str, Any] = {}
    if isinstance(lm, str):  # as lm-eval's own CLI builds it
        built_here = {
            "batch_size": cfg.batch_size,
            "max_batch_size": cfg.max_batch_size,
            "device": cfg.device,
        }
    results = simple_evaluate(
        model=lm,
        model_args=cfg.model_args if model_args is None else model_args,
        **built_here,
        tasks=prepared.tasks,
        num_fewshot=cfg.num_fewshot,
        use_cache=cfg.use_cache,
        limit=cfg.limit,
        samples=cfg.samples,
        check_integrity=cfg.check_integrity,
        write_out=cfg.write_out,
        log_samples=cfg.log_samples,
        system_instruction=cfg.system_instruction,
        apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn,
        gen_kwargs=cfg.gen_kwargs,
        task_manager=prepared.manager,
        verbosity=cfg.verbosity,
        predict_only=cfg.predict_only,
        random_seed=cfg.seed[0] if cfg.seed else None,
        numpy_random_seed=cfg.seed[1] if cfg.seed else None,
        torch_random_seed=cfg.seed[2] if cfg.seed else None,
        fewshot_random_seed=cfg.seed[3] if cfg.seed else None,
        confirm_run_unsafe_code=cfg.confirm_run_unsafe_code,
        metadata=cfg.metadata,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return dict(results)


def _aot_section(
    request: JobRequest,
    stats: dict[str, Any],
    counters: dict[str, Any],
    start: StartRecord,
    marks: dict[str, float],
) -> dict[str, Any]:
    from importlib.metadata import version

    from aot_core.models.tiny import TINY, _config

    now = time.perf_counter()
    config_file = request.config.model / "config.json"
    is_tiny = config_file.is_file() and json.loads(config_file.read_text()) == _config(TINY)
    return {
        "model": str(request.config.model),
        "spec": request.config.spec.to_dict(),
        "eager": request.config.eager,
        "start": start.to_dict(),
        "stats": stats,
        "requests": counters,
        "wall_s": {
            "to_model_ready": round(marks["ready"] - request.started_at, 3),
            "evaluate": round(marks["evaluated"] - marks["ready"], 3),
            "total": round(now - request.started_at, 3),
        },
        "versions": {"aot-core": version("aot-core"), "lm-eval": version("lm_eval")},
        "ignored_model_args": dict(request.config.ignored),
        "notes": [NOISE_NOTE] if is_tiny else [],
    }


def write_outputs(results: dict[str, Any], output: Path) -> list[Path]:
    """``results.json`` (lm-eval's results plus ``aot``) and one samples file per task."""
    from lm_eval.utils import handle_non_serializable

    output.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    samples = results.pop("samples", None) or {}
    written = [output / RESULTS_NAME]
    written[0].write_text(
        json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    for task, rows in samples.items():
        path = output / f"samples_{task}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(
                    json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n"
                )
        written.append(path)
    return written


def summary(results: dict[str, Any]) -> str:
    """lm-eval's results table, then what aot ran it on."""
    from lm_eval.utils import make_table

    aot = results["aot"]
    stats, wall = aot["stats"], aot["wall_s"]
    cache = stats.get("cache") or {}
    lines = [make_table(results)]
    if "groups" in results:
        lines.append(make_table(results, "groups"))
    lines.append(
        f"aot: {stats['backend']} {stats.get('backend_version', '')} "
        f"({stats.get('compile_mode')}), start: {aot['start']['path']}, "
        f"cache: {cache.get('status')}"
        + (f" ({cache.get('reason')})" if cache.get("reason") else "")
    )
    requests = aot["requests"]
    lines.append(
        f"aot: model ready after {wall['to_model_ready']:.1f} s (engine start "
        f"{stats.get('startup_s') or 0:.1f} s), evaluation {wall['evaluate']:.1f} s, "
        f"job {wall['total']:.1f} s; {requests['generated_tokens']} tokens generated, "
        f"{requests['scored_tokens']} scored"
    )
    lines.extend(f"note: {n}" for n in aot["notes"])
    return "\n".join(lines)
