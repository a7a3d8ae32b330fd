"""Compiled artifacts: a directory of compiled files plus a manifest that proves what they are.

An artifact directory holds ``manifest.json`` and ``files/`` (what the backend wrote while
compiling; a backend's ``spec.cache_dir`` points there). The manifest records the format
version, the backend and its version, the versions the backend pins (``Compiler.pins()``:
torch, vLLM, ...), the device (CUDA capability or CPU architecture and ISA), the spec
fingerprint, the model-config hash, and
every file with its sha256 and size.

Compiled files hold code that runs when loaded, so nothing loads unless ``verify_for_load``
passes: the manifest is aot's (format marker ``FORMAT_MARKER``) and agrees with itself,
every file matches its checksum, no file was added, and the artifact was built for this
environment. Nothing that aot cannot prove it wrote (an intact aot manifest listing every
file there with its checksum) is ever deleted or replaced (``check_owned``,
``NotOwnedError``). Writers publish atomically (build in a staging directory beside the
destination, fsync, rename) under a per-entry ``flock``, so
concurrent compiles of the same entry all finish with one intact entry, and an interrupted
compile leaves only a staging directory that no reader ever looks at.

The submodules, each importing only those listed before it:

- ``environment``: what compiled code depends on here (CPU ISA, CUDA capabilities, versions).
- ``manifest``: the manifest format (``Manifest``, ``FileRecord``), reading it, the ownership
  proof (``ownership_problem``, ``check_owned``), file helpers.
- ``identity``: the model-config hash and the cache-entry name (``entry_key``).
- ``stamps``: verification stamps (files a full check proved, by stat), so an unchanged
  entry is not re-hashed on every reuse; ``AOT_VERIFY=full`` ignores them.
- ``verification``: the manifest against itself, files against it, it against this host.
- ``publishing``: writing the manifest, the per-entry lock, staging and the atomic publish.
- ``store``: ``ArtifactStore`` (the cache directory of entries) and how entries are described.
- ``transfer``: exporting an artifact to one tar file and importing it into a store.

Everything public is re-exported here, so ``from aot_core.artifacts import X`` works for
every name. Nothing here imports torch or vLLM; versions come from ``importlib.metadata``.
"""

from aot_core.artifacts.environment import (
    cpu_isa,
    cuda_capabilities,
    device_kind,
    host_fingerprint,
    package_version,
    torch_version,
)
from aot_core.artifacts.identity import entry_key, model_config_hash
from aot_core.artifacts.manifest import (
    FILES_DIR,
    FORMAT_MARKER,
    FORMAT_VERSION,
    MANIFEST_NAME,
    FileRecord,
    Manifest,
    RankRecord,
    artifact_root,
    check_owned,
    foreign_files,
    fsync_tree,
    manifest_problem,
    ownership_problem,
    rank_records,
    read_manifest,
    resolve_artifact_dir,
)
from aot_core.artifacts.publishing import (
    INTENTS,
    LockTimeoutError,
    build_and_publish,
    check_replaceable,
    discard_entry,
    entry_lock,
    is_read_only_error,
    publish,
    remove_entry,
    remove_leftovers,
    reusable_entry,
    staging_dir,
    using_artifact,
    write_manifest,
)
from aot_core.artifacts.stamps import (
    STAMPS_DIR,
    VERIFY_ENV_VAR,
    FileStats,
    StampBook,
    full_check_forced,
    load_stamps,
    settle,
    stamp_published,
    stat_files,
)
from aot_core.artifacts.store import (
    CACHE_ENV_VAR,
    PATH_ENV_VARS,
    ArtifactStore,
    EntryInfo,
    default_cache_root,
    describe_manifest,
    directory_size,
    ensure_writable,
    format_bytes,
    path_from_env,
)
from aot_core.artifacts.transfer import (
    DEFAULT_MAX_MEMBERS,
    MAX_MEMBERS_ENV_VAR,
    export_artifact,
    export_target_problem,
    import_artifact,
    max_members_from_env,
)
from aot_core.artifacts.verification import (
    VerifyReport,
    check_compatible,
    manifest_inconsistencies,
    verify,
    verify_for_load,
    world_problem,
)

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_MAX_MEMBERS",
    "FILES_DIR",
    "FORMAT_MARKER",
    "FORMAT_VERSION",
    "INTENTS",
    "MANIFEST_NAME",
    "MAX_MEMBERS_ENV_VAR",
    "PATH_ENV_VARS",
    "STAMPS_DIR",
    "VERIFY_ENV_VAR",
    "ArtifactStore",
    "EntryInfo",
    "FileRecord",
    "FileStats",
    "LockTimeoutError",
    "Manifest",
    "RankRecord",
    "StampBook",
    "VerifyReport",
    "artifact_root",
    "build_and_publish",
    "check_compatible",
    "check_owned",
    "check_replaceable",
    "cpu_isa",
    "cuda_capabilities",
    "default_cache_root",
    "describe_manifest",
    "device_kind",
    "directory_size",
    "discard_entry",
    "ensure_writable",
    "entry_key",
    "entry_lock",
    "export_artifact",
    "export_target_problem",
    "foreign_files",
    "format_bytes",
    "fsync_tree",
    "full_check_forced",
    "host_fingerprint",
    "import_artifact",
    "is_read_only_error",
    "load_stamps",
    "manifest_inconsistencies",
    "manifest_problem",
    "max_members_from_env",
    "model_config_hash",
    "ownership_problem",
    "package_version",
    "path_from_env",
    "publish",
    "rank_records",
    "read_manifest",
    "remove_entry",
    "remove_leftovers",
    "resolve_artifact_dir",
    "reusable_entry",
    "settle",
    "staging_dir",
    "stamp_published",
    "stat_files",
    "torch_version",
    "using_artifact",
    "verify",
    "verify_for_load",
    "world_problem",
    "write_manifest",
]
