"""Turning a GGUF file into a float32 Hugging Face model directory, with transformers.

Imported only when a conversion has to run (``aot_core.models.gguf`` decides that): it needs
the ``aot-core[gguf]`` extra (torch, transformers, gguf, accelerate), imported inside the
functions so that importing this module stays cheap. transformers dequantizes every weight
to float32; the GGUF quantizer it attaches is dropped before saving, so the directory is a
plain ``LlamaForCausalLM`` (or whichever family) that any engine loads, with its tokenizer,
chat template and generation config beside it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aot_core.errors import GGUFError, OptionalDependencyError

EXTRA_PACKAGES = ("torch", "transformers", "gguf", "accelerate")
"""What ``aot-core[gguf]`` installs (import names), each needed to convert a GGUF file."""

INSTALL_HINT = "pip install 'aot-core[gguf]'"


def require_extra() -> None:
    """Raise ``OptionalDependencyError`` naming the extra's packages that are not installed.

    Looked up, not imported (importing torch and transformers takes seconds); a package
    that is installed but fails to import is reported by ``convert`` the same way.
    """
    missing = [name for name in EXTRA_PACKAGES if not _installed(name)]
    if missing:
        raise _missing(missing)


def _installed(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _missing(names: list[str], detail: str = "") -> OptionalDependencyError:
    return OptionalDependencyError(
        f"converting a GGUF file needs {', '.join(EXTRA_PACKAGES)}; missing here: "
        f"{', '.join(names)}{detail}. Install them with: {INSTALL_HINT}"
    )


def convert(gguf_file: Path, target: Path) -> dict[str, str]:
    """Write ``gguf_file`` as a float32 model directory ``target``; returns what converted
    it (package versions), for the cache entry's manifest."""
    require_extra()
    try:
        for name in EXTRA_PACKAGES:
            importlib.import_module(name)
    except ImportError as exc:
        raise _missing([exc.name or str(exc)], f" ({exc})") from exc
    import torch
    import transformers

    with _parse_once():
        arch = _architecture(gguf_file)
        tokenizer = _load(transformers.AutoTokenizer, gguf_file, arch)
        model = _load(
            transformers.AutoModelForCausalLM,
            gguf_file,
            arch,
            dtype=torch.float32,
            **_dequantize_kwargs(transformers),
        )
    _drop_quantizer(model)
    _check_dense(model, gguf_file)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return {
        "architecture": arch,
        "model_class": type(model).__name__,
        "transformers": transformers.__version__,
        "gguf": _version("gguf"),
        "torch": torch.__version__,
    }


def _architecture(gguf_file: Path) -> str:
    """``general.architecture`` of the file; a ``GGUFError`` when it cannot be read."""
    import gguf

    try:
        reader = gguf.GGUFReader(gguf_file)
        field = reader.fields["general.architecture"]
        value = field.contents() if hasattr(field, "contents") else None
        if value is None:
            value = bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError:
        raise GGUFError(
            f"{gguf_file} names no architecture (general.architecture is missing); it is not "
            "a GGUF model file",
            field="model",
        ) from None
    except (ValueError, IndexError, OSError, UnicodeDecodeError, AttributeError) as exc:
        raise GGUFError(
            f"{gguf_file} cannot be read as GGUF ({type(exc).__name__}: {exc}); the file is "
            "truncated or not a GGUF model. Download or reinstall it and try again",
            field="model",
        ) from exc
    return str(value)


def _load(auto: Any, gguf_file: Path, arch: str, **kwargs: Any) -> Any:
    """``auto.from_pretrained`` on the file, its failures as ``GGUFError``s naming ``arch``."""
    try:
        return auto.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, **kwargs)
    except (ValueError, KeyError, NotImplementedError) as exc:
        import transformers

        raise GGUFError(
            f"{gguf_file}: transformers {transformers.__version__} cannot convert this GGUF "
            f"file of architecture {arch!r} into a causal language model ({exc}). Convert it "
            "with a transformers release that supports the architecture, or pass a Hugging "
            "Face model directory instead",
            field="model",
        ) from exc
    except (IndexError, OSError, TypeError, RuntimeError) as exc:
        raise GGUFError(
            f"{gguf_file} cannot be read as a GGUF model ({type(exc).__name__}: {exc}); the "
            "file is truncated or damaged. Download or reinstall it and try again",
            field="model",
        ) from exc


def _dequantize_kwargs(transformers: Any) -> dict[str, Any]:
    """Ask for dense weights where transformers could otherwise keep GGUF blocks (releases
    whose ``GgufConfig`` has ``dequantize``); older releases always dequantize."""
    config = getattr(transformers, "GgufConfig", None)
    if config is None:
        return {}
    try:
        return {"quantization_config": config(dequantize=True)}
    except TypeError:
        return {}


def _drop_quantizer(model: Any) -> None:
    # The weights are dense float32 now; a quantizer left on the model would make
    # save_pretrained write a quantization_config that loaders then try to honour.
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        with contextlib.suppress(AttributeError):
            delattr(model, attr)
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")


def _check_dense(model: Any, gguf_file: Path) -> None:
    import torch

    odd = sorted(
        {
            str(t.dtype)
            for t in (*model.parameters(), *model.buffers())
            if t.is_floating_point() and t.dtype != torch.float32
        }
        | {type(t).__name__ for t in model.parameters() if type(t) is not torch.nn.Parameter}
    )
    if odd:
        raise GGUFError(
            f"{gguf_file}: transformers kept some weights in a form other than float32 "
            f"({', '.join(odd)}); aot needs a dense float32 model. Upgrade or downgrade "
            "transformers (aot-core[gguf])",
            field="model",
        )


@contextlib.contextmanager
def _parse_once() -> Iterator[None]:
    """Reuse one ``gguf.GGUFReader`` per file and one tensor-name map per architecture.

    transformers reads the file's metadata once for the tokenizer and twice for the model,
    and rebuilds gguf's tensor-name map for every module; on this 100 MB file that was
    most of a conversion's time. Both are looked up on the ``gguf`` module at call time,
    so memoizing them there, for this block only, makes each happen once. The readers are
    only read (a read-only memory map), so sharing one is safe.
    """
    import gguf

    saved = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    reader_cls, name_map = saved["GGUFReader"], saved["get_tensor_name_map"]
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)  # type: ignore[misc]
        return readers[key]

    if reader_cls is not None:
        gguf.GGUFReader = reader  # type: ignore[assignment,misc]
    if name_map is not None:
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is not None:
                setattr(gguf, name, value)
        readers.clear()


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""
