"""CompileSpec: validation messages, round trips and fingerprint stability."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aot_core import CompileSpec, SpecError


def test_defaults_are_valid_and_compile() -> None:
    spec = CompileSpec()
    assert spec.compile_mode == "default"
    assert spec.compiles
    assert spec.backend_options == {}


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        CompileSpec("default")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"compile_mode": "fast"}, "compile_mode", "allowed: 'none', 'default', 'max-autotune'"),
        ({"cuda_graph_sizes": (1, -2)}, "cuda_graph_sizes", "integer from 1 to"),
        ({"cuda_graph_sizes": (4, 4)}, "cuda_graph_sizes", "appears more than once"),
        ({"compile_sizes": "8"}, "compile_sizes", "list of positive integers"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens", ">= 1"),
        ({"max_model_len": 1.5}, "max_model_len", "integer"),
        ({"max_model_len": 10**9}, "max_model_len", "leave it unset to take the model's own"),
        ({"max_num_seqs": True}, "max_num_seqs", "integer"),
        ({"kv_cache_seqs": 0}, "kv_cache_seqs", ">= 1"),
        ({"long_prefill_token_threshold": -1}, "long_prefill_token_threshold", ">= 0"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size", ">= 1"),
        ({"dtype": "int8"}, "dtype", "allowed: auto, float32, float16, bfloat16"),
        ({"cuda_graphs": "yes"}, "cuda_graphs", "true or false"),
        ({"cache_dir": ""}, "cache_dir", "non-empty path"),
        ({"backend_options": [1]}, "backend_options", "mapping"),
        ({"backend_options": {"x": object()}}, "backend_options", "not allowed"),
        ({"backend_options": {"x": float("nan")}}, "backend_options", "finite"),
        (
            {"chunked_prefill": False, "max_num_batched_tokens": 128, "max_model_len": 512},
            "max_num_batched_tokens",
            "below max_model_len 512 while chunked_prefill is off",
        ),
        (
            {"cuda_graphs": False, "cuda_graph_sizes": (1, 2)},
            "cuda_graph_sizes",
            "cuda_graphs is false",
        ),
        (
            {"compile_mode": "none", "compile_sizes": (8,)},
            "compile_sizes",
            "compile_mode is 'none'",
        ),
        (
            {"chunked_prefill": False, "long_prefill_token_threshold": 64},
            "long_prefill_token_threshold",
            "needs chunked_prefill",
        ),
        (
            {"max_num_batched_tokens": 4, "max_num_seqs": 8},
            "max_num_batched_tokens",
            "below max_num_seqs",
        ),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, field: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        CompileSpec(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert fragment in str(info.value)


def test_max_model_len_is_bounded_above_every_real_context() -> None:
    from aot_core.spec import MAX_MODEL_LEN_LIMIT

    # The longest context a released model declares (10M tokens) passes; one more than
    # the bound does not, and the message names the bound.
    assert CompileSpec(max_model_len=10_485_760).max_model_len == 10_485_760
    assert CompileSpec(max_model_len=MAX_MODEL_LEN_LIMIT).max_model_len == MAX_MODEL_LEN_LIMIT
    with pytest.raises(SpecError, match=f"at most {MAX_MODEL_LEN_LIMIT}"):
        CompileSpec(max_model_len=MAX_MODEL_LEN_LIMIT + 1)
    with pytest.raises(SpecError, match="line 1"):
        CompileSpec.from_toml("max_model_len = 1000000000\n")


def test_budget_below_model_len_is_fine_with_chunked_prefill() -> None:
    spec = CompileSpec(chunked_prefill=True, max_num_batched_tokens=128, max_model_len=512)
    assert spec.max_num_batched_tokens == 128


def test_sizes_are_normalised_and_dtype_aliases_resolved() -> None:
    spec = CompileSpec(cuda_graph_sizes=[8, 1, 4], dtype="bf16")  # type: ignore[arg-type]
    assert spec.cuda_graph_sizes == (1, 4, 8)
    assert spec.dtype == "bfloat16"


def test_spec_is_immutable_including_backend_options() -> None:
    spec = CompileSpec(backend_options={"a": {"b": [1]}})
    with pytest.raises(AttributeError):
        spec.compile_mode = "none"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.backend_options["a"] = 2  # type: ignore[index]


def test_replace_validates_and_rejects_unknown_fields() -> None:
    spec = CompileSpec()
    assert spec.replace(max_model_len=64).max_model_len == 64
    with pytest.raises(SpecError, match="did you mean 'max_model_len'"):
        spec.replace(max_model_length=64)
    with pytest.raises(SpecError, match="max_num_seqs"):
        spec.replace(max_num_seqs=0)


FULL = CompileSpec(
    compile_mode="max-autotune",
    cuda_graphs=True,
    cuda_graph_sizes=(1, 2, 4),
    compile_sizes=(8,),
    chunked_prefill=True,
    max_num_batched_tokens=256,
    long_prefill_token_threshold=64,
    max_model_len=512,
    max_num_seqs=8,
    dtype="float32",
    cache_dir="/tmp/aot cache",
    backend_options={"cudagraph_mode": "PIECEWISE", "nested": {"k": [1, "two", 3.5, True]}},
)


@pytest.mark.parametrize("spec", [CompileSpec(), FULL])
def test_round_trips(spec: CompileSpec) -> None:
    assert CompileSpec.from_dict(spec.to_dict()) == spec
    assert CompileSpec.from_json(spec.to_json()) == spec
    assert CompileSpec.from_toml(spec.to_toml()) == spec
    assert json.loads(spec.to_json()) == spec.to_dict()


def test_file_round_trip(tmp_path: Path) -> None:
    for name in ("spec.toml", "spec.json"):
        FULL.save(tmp_path / name)
        assert CompileSpec.load(tmp_path / name) == FULL


def test_unknown_key_is_an_error_not_dropped() -> None:
    with pytest.raises(SpecError, match="did you mean 'compile_mode'") as info:
        CompileSpec.from_dict({"compile_mod": "none"})
    assert info.value.field == "compile_mod"


def test_toml_errors_name_field_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('compile_mode = "default"\n# comment\nmax_num_seqs = -3\n')
    with pytest.raises(SpecError) as info:
        CompileSpec.load(path)
    assert info.value.field == "max_num_seqs"
    assert info.value.line == 3
    assert "line 3" in str(info.value) and str(path) in str(info.value)


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('compile_mode = "default"\nmax_num_seqs = = 3\n')
    with pytest.raises(SpecError) as info:
        CompileSpec.load(path)
    assert info.value.line == 2


def test_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        CompileSpec.load(tmp_path / "absent.toml")


def test_fingerprint_ignores_key_order_and_changes_with_values() -> None:
    d = FULL.to_dict()
    reordered = dict(reversed(list(d.items())))
    reordered["backend_options"] = dict(reversed(list(d["backend_options"].items())))
    assert CompileSpec.from_dict(reordered).fingerprint() == FULL.fingerprint()
    assert FULL.replace(max_num_seqs=9).fingerprint() != FULL.fingerprint()
    assert hash(CompileSpec.from_dict(reordered)) == hash(FULL)


def test_run_time_fields_leave_the_fingerprint_alone() -> None:
    """cache_dir and kv_cache_seqs change no compiled code; the digests are the ones these
    specs had before kv_cache_seqs existed (2026-12-07), so no cache entry was orphaned."""
    assert FULL.fingerprint() == (
        "b18f70597bd89bbf0d7f9638d17b0bcf11616e32f1b71a376d5cd0d1f3aaa679"
    )
    assert CompileSpec().fingerprint() == (
        "602c0ff3d4c2c30fa3da2abf8595d9c8d4d4545dde3f3f18eb09de9059271043"
    )
    moved = FULL.replace(cache_dir="/elsewhere", kv_cache_seqs=3)
    assert moved.fingerprint() == FULL.fingerprint()
    assert FULL.replace(kv_cache_seqs=3) != FULL  # still a field of the spec


def test_fingerprint_is_stable_across_processes(tmp_path: Path) -> None:
    src = Path(__file__).parents[1] / "src"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(src)!r})
        from aot_core import CompileSpec
        print(CompileSpec.from_json(sys.stdin.read()).fingerprint())
        """
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            input=FULL.to_json(indent=None),
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {FULL.fingerprint()}
