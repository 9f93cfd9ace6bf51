"""``trtbuild download``: a Hugging Face repo (or a local checkpoint) to a verified serving checkpoint.

Wraps ``huggingface_hub``: the revision is resolved to a commit once (``HfApi.resolve_revision``)
and every file comes from that commit; only what serving needs is fetched (``select_files``);
``snapshot_download`` does the transfer (resumable, with its progress bar on stderr). The token is
the hub's own (``HF_TOKEN`` or ``hf auth login``): trtbuild never reads, prints or stores it.

A checkpoint is complete when ``trtbuild-checkpoint.json`` sits beside its files: repo id,
requested revision, commit, every file with size and sha256 (checked against the Hub's LFS sha256
where it has one), and the parsed ``ModelFacts``. The manifest is written last, atomically, and
removed before a new download starts, so an interrupted run never looks complete; the partial
files stay and the next run resumes.

Environment (read when ``download`` runs, not when huggingface_hub was imported): ``HF_ENDPOINT``,
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild._atomic import atomic_dir
from trtbuild.errors import (
    OutputExists,
    RuntimeFailure,
    SpecError,
    TrtbuildError,
    UserError,
    redact,
)
from trtbuild.files.checkpoint_manifest import (
    CHECKPOINT_MANIFEST,
    CheckpointManifest,
    FileEntry,
    checkpoint_facts,
    read_checkpoint_manifest,
    write_checkpoint_manifest,
)
from trtbuild.files.hf import file_sha256, snapshot_dir
from trtbuild.model_facts import ModelFacts
from trtbuild.specs import DownloadSpec
from trtbuild.vocab import TOKENIZER_FILES

# Top-level files serving needs besides the weights.
CONFIG_FILES = ("config.json", "generation_config.json", "hf_quant_config.json")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class HubUnreachable(RuntimeFailure):
    """The Hub (HF_ENDPOINT) could not be reached and no cached copy fits."""


class InsufficientDisk(UserError):
    """Not enough free space where the files go."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    manifest: CheckpointManifest


# -- pure helpers -----------------------------------------------------------------------------------
def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def select_files(repo_files: Iterable[str], *, all_weights: bool = False) -> list[str]:
    """The files to fetch: configs, tokenizer and one copy of the weights (safetensors first).

    Duplicates are skipped unless ``all_weights``: ``pytorch_model*.bin`` when safetensors exist,
    ``consolidated*`` and ``*.pth`` (Mistral/Meta native formats) and the ``original/`` folder.
    """
    files = sorted(set(repo_files))
    top = [f for f in files if "/" not in f]
    chosen = [f for f in top if _matches(f, CONFIG_FILES + TOKENIZER_FILES)]
    safetensors = [
        f
        for f in top
        if (f.endswith(".safetensors") or f.endswith(".safetensors.index.json"))
        and not f.startswith("consolidated")
    ]
    bins = [f for f in top if fnmatch.fnmatchcase(f, "pytorch_model*.bin*")]
    if all_weights:
        chosen = files
    elif any(f.endswith(".safetensors") for f in safetensors):
        chosen += safetensors
    elif bins:
        chosen += bins
    else:
        raise SpecError(
            "no Hugging Face-format weights (*.safetensors or pytorch_model*.bin) at the top of the "
            "repository; trtbuild needs a transformers checkpoint."
        )
    if "config.json" not in chosen:
        raise SpecError(
            "the repository has no config.json; trtbuild needs a transformers checkpoint."
        )
    return sorted(set(chosen))


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the hub's default (read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return Path(home).expanduser() / "hub"


def is_offline() -> bool:
    return _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- files, hashes and the manifest -----------------------------------------------------------------
def _facts(directory: Path, name: str) -> ModelFacts:
    facts = checkpoint_facts(directory)
    return facts.model_copy(update={"name": name})


def _entries(
    directory: Path,
    files: list[str],
    *,
    expected_sha256: dict[str, str],
    expected_size: dict[str, int],
    known: CheckpointManifest | None,
) -> list[FileEntry]:
    """Size and sha256 of every file, checked against what the Hub says; reuses unchanged hashes."""
    reuse = {f.path: f for f in known.files} if known else {}
    entries = []
    for name in files:
        path = directory / name
        if not path.is_file():
            raise RuntimeFailure(
                f"{name} is missing from {directory} after the download; run again."
            )
        size = path.stat().st_size
        if name in expected_size and size != expected_size[name]:
            raise RuntimeFailure(
                f"{path} has {size:,} bytes, the Hub says {expected_size[name]:,}; delete it and run again."
            )
        old = reuse.get(name)
        digest = old.sha256 if old and old.size == size else file_sha256(path, trust_hub_blob=False)
        if name in expected_sha256 and digest != expected_sha256[name]:
            raise RuntimeFailure(
                f"{path} does not match the Hub's sha256; delete it and run again."
            )
        entries.append(FileEntry(path=name, size=size, sha256=digest))
    return entries


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _check_space(target: Path, needed: int) -> None:
    free = _free_bytes(target)
    if needed > free:
        raise InsufficientDisk(
            f"{needed / 1e9:.1f} GB to download but {free / 1e9:.1f} GB free at {target}; free some "
            "space, or pass --local-dir on a larger disk (HF_HOME moves the cache)."
        )


# -- the command ------------------------------------------------------------------------------------
def download(spec: DownloadSpec) -> DownloadResult:
    """Fetch (or adopt) a checkpoint and write its manifest. Returns the checkpoint directory."""
    local = Path(spec.source).expanduser()
    if local.is_dir():
        return _adopt_local(local, spec)
    if spec.source.startswith((".", "/", "~")) or spec.source.count("/") > 1 or local.exists():
        raise SpecError(f"{spec.source} is not a checkpoint directory (and not a Hub repo id).")
    if not _REPO_ID.match(spec.source) or "--" in spec.source or ".." in spec.source:
        raise SpecError(
            f"{spec.source!r} is not a Hub repo id (owner/name) nor an existing directory."
        )
    return _from_hub(spec)


def _adopt_local(source: Path, spec: DownloadSpec) -> DownloadResult:
    if not (source / "config.json").is_file():
        raise SpecError(f"{source} has no config.json; it is not a transformers checkpoint.")
    files = select_files(
        (
            str(p.relative_to(source))
            for p in source.rglob("*")
            if p.is_file() and ".cache" not in p.parts
        ),
        all_weights=spec.all_weights,
    )
    files = [f for f in files if f != CHECKPOINT_MANIFEST]
    facts = _facts(source, source.resolve().name)

    def manifest_for(directory: Path, known: CheckpointManifest | None) -> CheckpointManifest:
        entries = _entries(directory, files, expected_sha256={}, expected_size={}, known=known)
        return CheckpointManifest(
            repo_id=None,
            revision=None,
            commit=None,
            source_dir=str(source.resolve()),
            files=entries,
            model=facts,
        )

    if spec.local_dir is None:
        manifest = manifest_for(source, read_checkpoint_manifest(source))
        write_checkpoint_manifest(source, manifest)
        return DownloadResult(source, manifest)
    out = spec.local_dir.expanduser()
    _check_space(out.parent, sum((source / f).stat().st_size for f in files))
    with atomic_dir(out, force=spec.force) as tmp:
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, tmp / name)
        manifest = manifest_for(tmp, None)
        write_checkpoint_manifest(tmp, manifest)
    return DownloadResult(out, manifest)


def _prepare_local_dir(local_dir: Path, force: bool) -> None:
    """Refuse a non-empty directory that is not an earlier download, unless --force."""
    if not local_dir.exists():
        return
    if not local_dir.is_dir():
        raise OutputExists(local_dir)
    earlier = (local_dir / CHECKPOINT_MANIFEST).exists() or (
        local_dir / ".cache" / "huggingface"
    ).is_dir()
    if any(local_dir.iterdir()) and not earlier and not force:
        raise OutputExists(local_dir)


def _from_hub(spec: DownloadSpec) -> DownloadResult:
    from huggingface_hub import HfApi

    repo_id = spec.source
    offline = is_offline()
    cache_dir = hub_cache_dir()
    endpoint = _endpoint()
    local_dir = spec.local_dir.expanduser().resolve() if spec.local_dir else None
    if local_dir is not None:
        _prepare_local_dir(local_dir, spec.force)
    api = HfApi(endpoint=endpoint)
    with _hub_errors(repo_id, spec.revision, endpoint, cache_dir, offline):
        revision = api.resolve_revision(
            repo_id, revision=spec.revision, cache_dir=cache_dir, local_files_only=offline
        )
        commit = revision.resolved
        expected_size, expected_sha = _remote_listing(
            api, repo_id, revision, cache_dir, local_dir, offline
        )
        files = select_files(expected_size, all_weights=spec.all_weights)
        target = local_dir or snapshot_dir(cache_dir, repo_id, commit)
        known = read_checkpoint_manifest(target)
        if known is not None:  # a new run is not complete until it writes its own manifest
            (target / CHECKPOINT_MANIFEST).unlink()
            if known.commit != commit:
                known = None
        if not offline:
            missing = sum(
                size
                for name, size in expected_size.items()
                if name in files and not (target / name).is_file()
            )
            _check_space(local_dir or cache_dir, missing)
        _note(f"{repo_id} @ {commit[:12]} ({spec.revision or 'main'}): {len(files)} files")
        path = _snapshot(repo_id, revision, files, cache_dir, local_dir, endpoint, offline)
    directory = Path(path)
    entries = _entries(
        directory,
        files,
        expected_sha256=expected_sha,
        expected_size=expected_size,
        known=known,
    )
    manifest = CheckpointManifest(
        repo_id=repo_id,
        revision=spec.revision or "main",
        commit=commit,
        files=entries,
        model=_facts(directory, repo_id),
    )
    write_checkpoint_manifest(directory, manifest)
    return DownloadResult(directory, manifest)


def _remote_listing(
    api: Any, repo_id: str, revision: Any, cache_dir: Path, local_dir: Path | None, offline: bool
) -> tuple[dict[str, int], dict[str, str]]:
    """{path: size} and {path: lfs sha256} for the commit (the cached listing when offline)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.hf_api import RepoFile

    if offline:
        try:
            tree = get_cached_repo_tree(
                repo_id, revision=revision, cache_dir=cache_dir, local_dir=local_dir
            )
        except CachedRepoTreeNotFoundError:  # cached by an older client: list the files themselves
            folder = local_dir or snapshot_dir(cache_dir, repo_id, revision.resolved)
            if not folder.is_dir():
                raise
            found = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts]
            return {str(p.relative_to(folder)): p.stat().st_size for p in found}, {}
        return {f.path: f.size for f in tree}, {}
    sizes: dict[str, int] = {}
    shas: dict[str, str] = {}
    for item in api.list_repo_tree(repo_id, revision=revision.resolved, recursive=True):
        if isinstance(item, RepoFile):
            sizes[item.path] = item.size
            if item.lfs is not None:
                shas[item.path] = item.lfs.sha256
    return sizes, shas


def _snapshot(
    repo_id: str,
    revision: Any,
    files: list[str],
    cache_dir: Path,
    local_dir: Path | None,
    endpoint: str,
    offline: bool,
) -> str:
    from huggingface_hub import snapshot_download

    return str(
        snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            allow_patterns=files,
            endpoint=endpoint,
            local_files_only=offline,
        )
    )


class _hub_errors:
    """Turn huggingface_hub's exceptions into trtbuild's, with what to do next."""

    def __init__(
        self, repo_id: str, revision: str | None, endpoint: str, cache_dir: Path, offline: bool
    ) -> None:
        self.repo_id, self.revision, self.endpoint = repo_id, revision or "main", endpoint
        self.cache_dir, self.offline = cache_dir, offline

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        mapped = None if exc is None or isinstance(exc, TrtbuildError) else self.map(exc)
        if mapped is not None:
            raise mapped from exc

    def map(self, exc: BaseException) -> TrtbuildError | None:
        import httpx2
        from huggingface_hub.errors import (
            CachedRepoTreeNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            IncompleteSnapshotError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
            RevisionResolutionError,
        )

        endpoint = redact(self.endpoint)  # HF_ENDPOINT may carry user:password@
        repo, url = self.repo_id, f"{endpoint}/{self.repo_id}"
        status = _status(exc)
        if status == 401 and not isinstance(exc, GatedRepoError | RepositoryNotFoundError):
            return UserError(
                f"{endpoint} refused the token (HTTP 401: invalid credentials); check HF_TOKEN, "
                "or run 'hf auth login' again (unset HF_TOKEN for a public repository)."
            )
        if isinstance(exc, GatedRepoError):
            return UserError(
                f"{repo} is gated: request access at {url}, then set HF_TOKEN or run 'hf auth login'."
            )
        if isinstance(exc, RepositoryNotFoundError):
            return UserError(
                f"repository {repo} not found on {endpoint} (or it is private): check the id, "
                "or set HF_TOKEN / run 'hf auth login' if it is yours."
            )
        if isinstance(exc, RevisionNotFoundError):
            return UserError(
                f"revision {self.revision!r} not found in {repo}; see {url}/tree/main."
            )
        offline_miss = (
            RevisionResolutionError,
            CachedRepoTreeNotFoundError,
            LocalEntryNotFoundError,
        )
        if self.offline and isinstance(exc, offline_miss + (OfflineModeIsEnabled,)):
            what = "complete in" if isinstance(exc, IncompleteSnapshotError) else "in"
            return UserError(
                f"HF_HUB_OFFLINE is set and {repo}@{self.revision} is not {what} the cache "
                f"({self.cache_dir}); unset HF_HUB_OFFLINE to download it."
            )
        network = (httpx2.TransportError, OfflineModeIsEnabled) + offline_miss
        if isinstance(exc, network):
            return HubUnreachable(
                f"cannot reach {endpoint} ({type(exc).__name__}). Check the network or proxy; "
                f"with a cached copy, set HF_HUB_OFFLINE=1 to use it."
            )
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return InsufficientDisk(
                f"no space left on device while downloading {repo}; partial files are kept and the "
                "next run resumes. Free some space, or pass --local-dir on a larger disk."
            )
        if status == 403:
            return UserError(
                f"{endpoint} refused access to {repo} (HTTP 403); check that the token of "
                "HF_TOKEN / 'hf auth login' may read it."
            )
        if isinstance(exc, HfHubHTTPError):
            return RuntimeFailure(
                f"{endpoint} answered {status or 'an error'} for {repo}: "
                f"{redact(str(exc)).splitlines()[0]}; try again later."
            )
        return None


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error, if it came from a response."""
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None
