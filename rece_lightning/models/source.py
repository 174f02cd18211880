"""Where a model comes from: the embedded testbed, a local folder, or a Hugging Face Hub id (one resolver for every
model argument: ``model.pretrained``, the CLIP metric's model, …).

A model argument is read the way diffusers' and transformers' ``from_pretrained`` read it:

1. ``"testbed"`` (:data:`TESTBED`): the embedded testbed;
2. an existing local path: that folder, used as it is (never modified);
3. otherwise ``org/name`` or ``org/name@revision`` (a branch, tag or commit hash): a Hub id, resolved by
   ``huggingface_hub`` in the user's cache (``HF_HOME``, ``HF_HUB_CACHE``) — downloading what is missing when online,
   the cache alone with ``HF_HUB_OFFLINE=1``. Pipelines are resolved by diffusers' own
   ``DiffusionPipeline.download`` (the files ``DiffusionPipeline.from_pretrained`` would fetch: ``model_index.json``,
   the components' configs and safetensors weights); transformers models (e.g. the CLIP score's) by
   ``snapshot_download`` of their configs, tokenizer/processor files and safetensors weights (:data:`TRANSFORMERS_FILES`;
   pickled ``.bin`` weights are never fetched). Both share the cache with diffusers and transformers: a model already
   used with them is not downloaded again.

A model that cannot be resolved is a :class:`~rece_lightning.errors.RECEError` of one line naming the argument, the id
and the command that fetches it (``hf download org/name``); the ``rece`` command resolves every model argument before
anything is loaded (:func:`rece_lightning.artefacts.checks.check_model_sources`).

This module imports neither torch nor Lightning (diffusers only inside :func:`resolve`, for a pipeline Hub id).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rece_lightning.errors import RECEError

__all__ = ["TESTBED", "TRANSFORMERS_FILES", "ModelSource", "download_command", "hub_id", "is_testbed", "resolve"]

TESTBED = "testbed"
"""The model argument that names the embedded testbed (:mod:`rece_lightning.testbed`)."""

TRANSFORMERS_FILES = ("*.json", "*.txt", "*.model", "*.safetensors")
"""What is fetched of a transformers model's Hub repository: configs, tokenizer and processor files, safetensors
weights (not the pickled ``.bin``, TensorFlow or Flax copies)."""

Kind = Literal["diffusers", "transformers"]
"""What the model is: a diffusers pipeline, or a transformers model with its processor."""

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model argument.

    Attributes:
        spec: the argument as given (``"testbed"``, a path, ``org/name`` or ``org/name@revision``).
        folder: the local folder that holds the model (``None`` for the testbed); for a Hub id, its snapshot folder in
            the Hugging Face cache (read-only: never write into it).
        repo_id: the Hub id (``None`` unless ``spec`` is one).
        revision: the revision asked for (``None``: the default branch).
        commit: the commit hash of the resolved snapshot (Hub ids only): what identifies the weights used.
    """

    spec: str
    folder: Path | None
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    @property
    def testbed(self) -> bool:
        """Whether this is the embedded testbed."""
        return self.folder is None

    def identity(self) -> dict[str, Any]:
        """What to record with results: the argument, the folder and, for a Hub id, the id, revision and commit."""
        out: dict[str, Any] = {"source": self.spec, "folder": None if self.folder is None else str(self.folder)}
        if self.repo_id is not None:
            out.update(repo_id=self.repo_id, revision=self.revision, commit=self.commit)
        return out


def is_testbed(spec: Any) -> bool:
    """Whether the model argument ``spec`` names the embedded testbed."""
    return isinstance(spec, str) and spec == TESTBED


def hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``spec`` is a Hub id ``org/name`` or ``org/name@revision``; ``None`` for anything
    else (an existing local path is never a Hub id, as in diffusers and transformers)."""
    if is_testbed(spec) or Path(spec).expanduser().exists():
        return None
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1 or (_ and not revision):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        return None
    return repo, revision or None


def download_command(repo_id: str, revision: str | None = None) -> str:
    """The command that puts ``repo_id`` (at ``revision``) into the Hugging Face cache."""
    return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")


def resolve(spec: str, what: str = "model", kind: Kind = "diffusers") -> ModelSource:
    """The model named by ``spec`` (see the module docstring); a Hub id is looked up (and, online, downloaded)
    through huggingface_hub, once per process.

    Args:
        spec: ``"testbed"``, a local folder, ``org/name`` or ``org/name@revision``.
        what: the argument's name, for error messages (e.g. ``"model.pretrained"``).
        kind: ``"diffusers"`` (a pipeline) or ``"transformers"`` (a model with its processor).

    Raises:
        RECEError: a Hub id that is not in the cache offline, not on the Hub, gated, or fails to download.
    """
    spec = str(spec)
    if is_testbed(spec):
        return ModelSource(spec, None)
    parsed = hub_id(spec)
    if parsed is None:
        return ModelSource(spec, Path(spec).expanduser())
    repo_id, revision = parsed
    from huggingface_hub import constants

    try:
        folder = _download(repo_id, revision, kind, constants.HF_HUB_CACHE, bool(constants.HF_HUB_OFFLINE))
    except Exception as err:  # huggingface_hub and diffusers raise many types; each becomes one line
        raise RECEError(_failure(what, repo_id, revision, err)) from err
    commit = folder.name if _COMMIT.fullmatch(folder.name) and folder.parent.name == "snapshots" else None
    return ModelSource(spec, folder, repo_id, revision, commit)


@functools.cache
def _download(repo_id: str, revision: str | None, kind: Kind, cache: str, offline: bool) -> Path:
    """The snapshot folder of ``repo_id`` in ``cache`` (the arguments are the cache key: one look-up per process)."""
    if kind == "diffusers":
        from diffusers import DiffusionPipeline

        folder = DiffusionPipeline.download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                            use_safetensors=True)
    else:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                   allow_patterns=list(TRANSFORMERS_FILES))
    return Path(folder)


def _failure(what: str, repo_id: str, revision: str | None, err: Exception) -> str:
    """One line: which argument, which id, why, and the command that fetches it."""
    from huggingface_hub import constants, errors
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub ≥ 2 checks cached snapshots

    name = repo_id + (f"@{revision}" if revision else "")
    fetch = f"fetch it online with `{download_command(repo_id, revision)}` (into the same HF_HOME)"
    if isinstance(err, GatedRepoError):
        why = "is gated on the Hugging Face Hub: accept its licence on huggingface.co, log in with `hf auth login`"
        return f"{what} {name} {why}, then {fetch}"
    if isinstance(err, RevisionNotFoundError):
        return f"{what} {name}: the Hugging Face Hub has no revision {revision!r} of {repo_id}; give an existing one"
    if isinstance(err, RepositoryNotFoundError):
        return (f"{what} {name}: neither a local folder nor a model on the Hugging Face Hub; give a local folder, "
                f"a Hub id (org/name or org/name@revision) or '{TESTBED}'")
    if isinstance(err, incomplete):
        missing = re.search(r"(\d+) file\(s\) are missing \(([^)]*)\)", str(err))
        detail = f" ({missing.group(1)} files missing: {missing.group(2)})" if missing else ""
        return (f"{what} {name} is only partly in the Hugging Face cache ({constants.HF_HUB_CACHE}){detail}; complete "
                f"it online with `{download_command(repo_id, revision)}` (into the same HF_HOME), or give a local folder")
    if constants.HF_HUB_OFFLINE:
        return (f"{what} {name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
                f"forbids downloads; {fetch}, or give a local folder")
    reason = " ".join(str(err).split())[:300] or type(err).__name__
    return f"{what} {name} could not be fetched from the Hugging Face Hub ({reason}); {fetch}, or give a local folder"
