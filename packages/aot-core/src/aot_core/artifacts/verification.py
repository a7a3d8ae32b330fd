"""Checking an artifact: its files against the manifest, and the manifest against this host."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from aot_core.artifacts import environment
from aot_core.artifacts.environment import cpu_isa, package_version
from aot_core.artifacts.identity import _pins_for, key_digest, key_prefix
from aot_core.artifacts.manifest import (
    FILES_DIR,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MANIFEST_TEMP_NAME,
    Manifest,
    _sha256_file,
    _walk_files,
    read_manifest,
    resolve_artifact_dir,
)
from aot_core.artifacts.stamps import StampBook
from aot_core.errors import ArtifactCorruptError, ArtifactIncompatibleError, SpecError
from aot_core.spec import CompileSpec


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """The outcome of checking an artifact's files against its manifest."""

    path: str
    """The artifact directory."""

    manifest: Manifest | None
    """The parsed manifest, or None when it is missing or unreadable."""

    tampered: tuple[str, ...] = ()
    """Files whose bytes differ from the manifest's checksum."""

    truncated: tuple[str, ...] = ()
    """Files shorter than the manifest says."""

    missing: tuple[str, ...] = ()
    """Files the manifest lists that are not there."""

    extra: tuple[str, ...] = ()
    """Files (or links) present that the manifest does not list."""

    inconsistent: tuple[str, ...] = ()
    """Where the manifest contradicts itself (an edited field, e.g. torch_version or pins)."""

    error: str = ""
    """Why the manifest itself could not be used, when it could not."""

    @property
    def ok(self) -> bool:
        """True when the manifest is readable and every file matches it exactly."""
        return self.manifest is not None and not (
            self.error
            or self.inconsistent
            or self.tampered
            or self.truncated
            or self.missing
            or self.extra
        )

    def problems(self) -> list[str]:
        """Human-readable problems, one per line; empty when ok."""
        out = [self.error] if self.error else []
        for label, names in (
            ("manifest inconsistent", self.inconsistent),
            ("tampered (checksum differs)", self.tampered),
            ("truncated", self.truncated),
            ("missing", self.missing),
            ("unexpected extra file", self.extra),
        ):
            out.extend(f"{label}: {n}" for n in names)
        return out

    def describe(self) -> str:
        """One paragraph: "ok" or the problems."""
        if self.ok:
            assert self.manifest is not None
            return f"ok ({len(self.manifest.files)} files verified)"
        return "; ".join(self.problems())


def verify(
    artifact_dir: str | os.PathLike[str], *, stamps: StampBook | None = None
) -> VerifyReport:
    """Check an artifact's manifest for consistency and every file against it.

    Checksums, sizes, missing and unlisted files, and ``manifest_inconsistencies``. With
    ``stamps``, a file whose stat equals its stamp is not hashed again, and every file that
    matches is recorded in ``stamps.proved`` (``aot_core.artifacts.stamps``).
    """
    root = resolve_artifact_dir(artifact_dir)
    try:
        manifest = read_manifest(root)
    except ArtifactCorruptError as exc:
        return VerifyReport(path=str(root), manifest=None, error=str(exc))
    tampered: list[str] = []
    truncated: list[str] = []
    missing: list[str] = []
    listed = set()
    for record in manifest.files:
        rel = record.path
        listed.add(rel)
        if not _safe_relpath(rel) or not rel.startswith(f"{FILES_DIR}/"):
            tampered.append(f"{rel} (path outside the artifact)")
            continue
        path = root / rel
        if path.is_symlink() or (path.exists() and not path.is_file()):
            tampered.append(f"{rel} (not a plain file)")
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            missing.append(rel)
            continue
        if st.st_size < record.size:
            truncated.append(f"{rel} ({st.st_size} of {record.size} bytes)")
        elif st.st_size != record.size or not _matches(path, rel, record.sha256, st, stamps):
            tampered.append(rel)
    extra = [rel for rel, _ in _walk_files(root) if rel not in listed and rel != MANIFEST_NAME]
    tampered.extend(_rank_problems(manifest, listed))
    return VerifyReport(
        path=str(root),
        manifest=manifest,
        inconsistent=tuple(manifest_inconsistencies(manifest)),
        tampered=tuple(tampered),
        truncated=tuple(truncated),
        missing=tuple(missing),
        extra=tuple(extra),
    )


def _rank_problems(manifest: Manifest, listed: set[str]) -> list[str]:
    """A rank record that names a file the manifest does not list, or too many ranks."""
    tp, pp = manifest.world_size
    problems = [
        f"{rel} (named by rank {r.rank} but not listed)"
        for r in manifest.ranks
        for rel in r.files
        if rel not in listed
    ]
    if len(manifest.ranks) > tp * pp:
        problems.append(
            f"manifest.json ({len(manifest.ranks)} rank records for a world of {tp * pp})"
        )
    return problems


def world_problem(
    manifest: Manifest, *, tensor_parallel_size: int, pipeline_parallel_size: int
) -> str:
    """Why an artifact compiled for another world size cannot serve this one; "" when it can.

    Each rank compiles only its own shard of the model, so the compiled code of a world of
    2 is not the code a world of 1 (or 4) runs.
    """
    tp, pp = manifest.world_size
    if (tp, pp) == (tensor_parallel_size, pipeline_parallel_size):
        return ""
    ranks = ", ".join(f"rank {r.rank}" for r in manifest.ranks)
    held = f"; it holds {ranks}" if ranks else ""
    return (
        f"built for tensor_parallel_size={tp} x pipeline_parallel_size={pp} ({tp * pp} "
        f"rank(s){held}), but this start asks for tensor_parallel_size={tensor_parallel_size} x "
        f"pipeline_parallel_size={pipeline_parallel_size} "
        f"({tensor_parallel_size * pipeline_parallel_size} rank(s)); compile for this world "
        "size (a new entry), or start with the artifact's"
    )


def _matches(
    path: Path, rel: str, sha256: str, st: os.stat_result, stamps: StampBook | None
) -> bool:
    """True when the file's bytes hash to ``sha256``, or its stamp says they did and its
    stat has not changed since."""
    if stamps is not None and stamps.vouches(rel, sha256, st):
        return True
    if _digest_or_none(path) != sha256:
        return False
    if stamps is not None:
        stamps.prove(rel, sha256, st, path)
    return True


def _digest_or_none(path: Path) -> str | None:
    try:
        return _sha256_file(path)
    except OSError:  # swapped for a link, a FIFO or unreadable since the checks above
        return None


def manifest_inconsistencies(manifest: Manifest) -> list[str]:
    """Where a manifest contradicts itself or what its backend requires; empty when it does not.

    Every field that decides whether compiled code may load is tied to another: the
    recorded versions to the pins, the pins to what the backend requires (``_pins_for``),
    the spec to its fingerprint, and the key to all of them (recomputed the way
    ``entry_key`` computed it, for manifests that record the host fingerprint). An edit of
    any one of them, such as changing only ``torch_version`` or emptying ``pins``, shows.
    """
    problems: list[str] = []
    for package, recorded in manifest.recorded_versions().items():
        if package in manifest.pins and manifest.pins[package] != recorded:
            problems.append(
                f"{package}_version is {recorded!r} but the pins say {manifest.pins[package]!r}"
            )
    lacking = sorted(set(_pins_for(manifest.backend)) - set(manifest.pins))
    if lacking:
        problems.append(
            f"pins lack {', '.join(lacking)}, which backend {manifest.backend!r} requires"
        )
    try:
        spec = CompileSpec.from_dict(manifest.spec)
        if spec.fingerprint() != manifest.spec_fingerprint:
            problems.append("spec_fingerprint does not match the recorded spec")
    except (SpecError, TypeError, ValueError) as exc:
        problems.append(f"the recorded spec is not a valid spec here ({exc})")
    if manifest.host_fingerprint:
        digest = key_digest(
            format_version=manifest.format_version,
            backend=manifest.backend,
            backend_version=manifest.backend_version,
            spec_fingerprint=manifest.spec_fingerprint,
            model_config_hash=manifest.model_config_hash,
            pins=manifest.pins,
            host=manifest.host_fingerprint,
        )
        if not (
            manifest.key.startswith(key_prefix(manifest.backend))
            and manifest.key.endswith(f"-{digest}")
        ):
            problems.append(
                f"key {manifest.key!r} does not match the manifest's own backend, versions, "
                "spec, model and pins"
            )
    return problems


def _safe_relpath(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and "" not in parts


def check_compatible(manifest: Manifest, *, backend: str | None = None) -> list[str]:
    """Why ``manifest``'s artifact cannot load in this environment; empty when it can.

    Checks the format version, the backend name (when given), the backend's version,
    every pinned version (each compared with what the backend's ``pins()`` reads here, or
    with the installed distribution of that name when the backend does not pin it), and
    the device: CUDA capability, or CPU architecture and ISA extensions.
    """
    problems: list[str] = []
    if manifest.format_version > FORMAT_VERSION:
        problems.append(
            f"manifest format {manifest.format_version} is newer than this aot-core understands "
            f"({FORMAT_VERSION}); upgrade aot-core"
        )
    if backend is not None and manifest.backend != backend:
        problems.append(f"built by backend {manifest.backend!r}, not {backend!r}")
    current_backend = _backend_version(manifest.backend)
    if current_backend is not None and current_backend != manifest.backend_version:
        problems.append(
            f"built with backend {manifest.backend} {manifest.backend_version}, this "
            f"environment has {current_backend}"
        )
    current = _pins_for(manifest.backend)
    for package, wanted in sorted(manifest.pins.items()):
        have = current[package] if package in current else package_version(package)
        if have != wanted:
            problems.append(
                f"built for {package} {wanted or '(not installed)'}, this environment has "
                f"{package} {have or '(not installed)'}"
            )
    arch = platform.machine()
    if manifest.cpu_arch != arch:
        problems.append(f"built on a {manifest.cpu_arch} CPU, this machine is {arch}")
    if manifest.device_kind == "cuda":
        caps = environment.cuda_capabilities()
        if not caps:
            problems.append(
                f"built for a CUDA device (capability {manifest.cuda_capability or '?'}), "
                "and no NVIDIA GPU is visible here"
            )
        elif manifest.cuda_capability and manifest.cuda_capability not in caps:
            problems.append(
                f"built for CUDA capability {manifest.cuda_capability}, the GPUs here have "
                f"{', '.join(caps)}"
            )
    elif manifest.device_kind == "cpu":
        lacking = sorted(set(manifest.cpu_isa) - set(cpu_isa()))
        if lacking:
            problems.append(
                f"built for a CPU with {', '.join(lacking)}, which this CPU lacks (compiled "
                "kernels would crash with illegal instructions)"
            )
    return problems


def _backend_version(backend: str) -> str | None:
    """The installed version of ``backend``'s distribution, None when it is not installed."""
    from aot_core.registry import installed_backends

    with contextlib.suppress(Exception):
        cls = installed_backends().get(backend)
        if cls is not None:
            return cls.version() or None
    return None


def verify_for_load(
    artifact_dir: str | os.PathLike[str],
    *,
    backend: str | None = None,
    discard_extra: bool = False,
    world: tuple[int, int] | None = None,
    stamps: StampBook | None = None,
) -> Manifest:
    """Gate in front of loading compiled code: raise unless the artifact is intact and fits here.

    ``artifact_dir`` is the artifact directory or its ``files/`` directory. Raises
    ``ArtifactCorruptError`` (tampered, truncated, missing or unlisted files, bad manifest)
    or ``ArtifactIncompatibleError`` (another backend, torch, vLLM or device, or, when
    ``world`` = (tensor_parallel_size, pipeline_parallel_size) is given, another world
    size: ``world_problem``). Callers then
    compile afresh into a new directory; they never load the refused files.
    ``discard_extra`` is for backends whose engine writes into its cache while starting:
    instead of refusing an entry over unlisted files below ``files/`` (where the engine
    writes), it deletes them (the caller holds the entry's lock) once everything listed has
    verified and the artifact fits here, so the engine never reads a file the manifest does
    not vouch for; at worst it recomputes what they held. Unlisted files anywhere else
    (beside ``manifest.json``: a project's own files around a copied manifest) refuse the
    artifact and are never deleted (``ownership_problem`` says why this is the only place
    aot deletes files its manifest does not list). ``stamps`` as for ``verify``.
    """
    report = verify(artifact_dir, stamps=stamps)
    if report.manifest is None:
        raise ArtifactCorruptError(report.error)
    damaged = report.inconsistent or report.tampered or report.truncated or report.missing
    outside = [
        rel
        for rel in report.extra
        if not rel.startswith(f"{FILES_DIR}/") and rel != MANIFEST_TEMP_NAME
    ]
    if (damaged or outside or (report.extra and not discard_extra)) and report.error == "":
        raise ArtifactCorruptError(
            f"{report.path}: refusing to load a damaged artifact: {report.describe()}"
        )
    problems = check_compatible(report.manifest, backend=backend)
    if world is not None:
        mismatch = world_problem(
            report.manifest, tensor_parallel_size=world[0], pipeline_parallel_size=world[1]
        )
        problems.extend([mismatch] if mismatch else [])
    if problems:
        raise ArtifactIncompatibleError(
            f"{report.path}: refusing to load an artifact built for another environment: "
            + "; ".join(problems)
        )
    root = Path(report.path)
    for rel in report.extra:
        (root / rel).unlink(missing_ok=True)
    return report.manifest
