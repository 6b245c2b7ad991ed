"""The adapter registry: LoRA adapters as versions of MLflow registered models.

An adapter is a registered model tagged `gemlora.kind=lora-adapter`; each version's source is a
plain PEFT directory logged as run artifacts, and its tags hold gemlora's metadata and the
content digest. References: `NAME@ALIAS`, `NAME/VERSION`, or `NAME` = the default alias
(`champion`) when that alias is set, else the newest version.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gemlora.adapters import mlflow_client
from gemlora.adapters.cache import AdapterCache
from gemlora.adapters.compat import Compatibility, TrainingBase, check_compatibility, lookup_base
from gemlora.adapters.errors import AdapterError, AdapterNotFoundError, RegistryUnavailableError
from gemlora.adapters.metadata import (
    DIGEST_TAG,
    KIND,
    KIND_TAG,
    SIZE_TAG,
    AdapterMetadata,
    adapter_files,
    adapter_size,
    content_digest,
    metadata_from_config,
    read_adapter_config,
)
from gemlora.adapters.refs import (
    AdapterRef,
    parse_ref,
    validate_alias,
    validate_name,
    validate_version,
)
from gemlora.adapters.verification_record import (
    DEFAULT_PROMOTION_RULE,
    PromotionRule,
    allows_promotion,
)
from gemlora.bases import BaseSpec, load_catalogue, resolve_base
from gemlora.paths import gemlora_home

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
CANDIDATE = "candidate"
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class RegistryConfig(BaseModel):
    """Where the registry lives and how resolved adapters are cached."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(
        default_factory=_default_tracking_uri,
        description="MLflow server URL or SQL database URI; default $MLFLOW_TRACKING_URI, "
        f"else the local server {DEFAULT_TRACKING_URI}. The file store is refused.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: gemlora_home() / "adapter-cache",
        description="Where resolved adapter versions are kept (verified, by content digest).",
    )
    cache_max_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Cache size cap; least recently used go first."
    )
    default_alias: str = Field(default="champion", description="What a bare `NAME` means.")
    alias_ttl_s: float = Field(
        default=30,
        ge=0,
        description="How long a resolved reference is trusted before MLflow is asked again: "
        "a moved alias is served within this time.",
    )
    stale_limit_s: float = Field(
        default=3600,
        ge=0,
        description="While MLflow is unreachable, a reference resolved before keeps its version "
        "for this long after it was last confirmed; names never resolved get 503.",
    )
    experiment: str = Field(
        default="gemlora-adapters", description="Where registrations without a run get one."
    )
    max_lora_rank: int = Field(
        default=512, ge=1, description="Rank limit at registration (vLLM's largest)."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _not_the_file_store(cls, uri: str) -> str:
        scheme = urlparse(uri).scheme.split("+")[0]
        if scheme not in ("http", "https", *_SQL_SCHEMES):
            raise ValueError(
                f"tracking URI {uri!r} is not an MLflow server URL (http://...) or a database "
                "URI (sqlite:///..., postgresql://...); the MLflow file store is not supported"
            )
        return uri

    @field_validator("default_alias")
    @classmethod
    def _valid_alias(cls, alias: str) -> str:
        return validate_alias(alias)


# --- what the registry returns ----------------------------------------------------------------


class AdapterVersion(BaseModel):
    """One registered version of an adapter."""

    name: str
    version: int
    aliases: list[str]
    digest: str | None = Field(description="Content digest; None if not registered by gemlora.")
    size_bytes: int | None
    metadata: AdapterMetadata | None
    run_id: str | None
    source: str
    description: str
    created_at: datetime
    tags: dict[str, str]


class AdapterSummary(BaseModel):
    """One adapter in `list()`."""

    name: str
    description: str
    version_count: int
    latest_version: int | None
    aliases: dict[str, int]
    base: str | None = Field(description="Base of the newest version.")
    updated_at: datetime


class AdapterDetails(BaseModel):
    """An adapter with every version, newest first."""

    name: str
    description: str
    aliases: dict[str, int]
    tags: dict[str, str]
    versions: list[AdapterVersion]


class ResolvedAdapter(BaseModel):
    """A reference resolved to a verified local PEFT directory."""

    ref: str
    name: str
    version: int
    path: Path
    digest: str
    metadata: AdapterMetadata | None
    aliases: list[str]
    notes: list[str] = Field(default_factory=list, description="Compatibility notes.")

    @property
    def version_ref(self) -> str:
        """`NAME/VERSION`: what this reference points at now, and always will."""
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class _Lookup:
    version: AdapterVersion
    expires: float
    confirmed: float  # when MLflow last said so


# --- the registry -----------------------------------------------------------------------------


class AdapterRegistry:
    """Register, find, alias, delete and resolve adapters. Thread-safe; `resolve` is the one
    method built for the serving path (TTL-cached lookups, cached verified downloads)."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self.cache = AdapterCache(self.config.cache_dir, self.config.cache_max_bytes)
        self._lookups: dict[str, _Lookup] = {}
        self._checks: dict[tuple, Compatibility] = {}
        self._lock = threading.Lock()

    @functools.cached_property
    def client(self):
        return mlflow_client.make_client(self.config.tracking_uri)

    # --- registering --------------------------------------------------------------------------

    def register(
        self,
        adapter_dir: Path,
        name: str,
        metadata: AdapterMetadata,
        run_id: str | None = None,
        alias: str | None = CANDIDATE,
    ) -> int:
        """Make `adapter_dir` a new version of adapter `name`; returns the version number.

        The adapter is checked against the base it was trained on (`metadata.base`) before
        anything is written. Its files are logged to `run_id` (or to a new run in the
        registration experiment), the version is tagged with the metadata and content digest,
        and `alias` is pointed at it. A failure on the way leaves no version behind, as far as
        MLflow lets it be removed.

        With `run_id`, registering is idempotent: when that run already has a version of `name`
        with this content and metadata (an earlier attempt that MLflow dropped after creating
        the version, so that its rollback failed too), that version is completed (the alias
        pointed at it) and returned instead of a second one being made.
        """
        adapter_dir = Path(adapter_dir)
        validate_name(name)
        if alias is not None:
            validate_alias(alias)
        spec = self._training_spec(metadata.base)
        metadata = self._complete(adapter_dir, metadata, spec)
        trained_on = TrainingBase(spec.name, spec.family, metadata.base_quantization or "none")
        compatibility = check_compatibility(
            adapter_dir, spec, self.config.max_lora_rank, trained_on
        )
        compatibility.raise_if_incompatible(f"adapter {adapter_dir}", spec.name)
        digest = content_digest(adapter_dir)
        tags = metadata.to_tags() | {DIGEST_TAG: digest, SIZE_TAG: str(adapter_size(adapter_dir))}
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            version = self._create_version(adapter_dir, name, tags, digest, run_id, alias)
        self._forget(name)
        return version

    def import_adapter(
        self,
        adapter_dir: Path,
        name: str,
        base: str,
        *,
        alias: str | None = CANDIDATE,
        extra: dict[str, str] | None = None,
    ) -> int:
        """Register an adapter trained elsewhere on `base` (catalogue name, directory or hub
        id). Rank, alpha and targets come from its `adapter_config.json`."""
        try:
            config = read_adapter_config(Path(adapter_dir))
        except (FileNotFoundError, ValueError):
            config = {}  # register() refuses it with the reason
        recorded = {
            "imported_from": str(Path(adapter_dir).resolve()),
            "base_model_name_or_path": str(config.get("base_model_name_or_path")),
            "peft_version": str(config.get("peft_version")),
        }
        metadata = AdapterMetadata(base=base, extra=recorded | (extra or {}))
        return self.register(adapter_dir, name, metadata, alias=alias)

    def _training_spec(self, base: str) -> BaseSpec:
        spec = lookup_base(base)
        if spec is None:
            raise AdapterError(
                f"unknown base {base!r}: use a catalogue name ({', '.join(load_catalogue())}), "
                "a model directory or a hub id"
            )
        return spec

    def _complete(
        self, adapter_dir: Path, metadata: AdapterMetadata, spec: BaseSpec
    ) -> AdapterMetadata:
        with contextlib.suppress(FileNotFoundError, ValueError):  # the check reports it
            metadata = metadata_from_config(adapter_dir, metadata)
        return metadata.model_copy(
            update={
                "base": spec.name,
                "base_family": spec.family,
                "base_quantization": metadata.base_quantization or spec.quantization,
                "base_revision": metadata.base_revision or spec.revision,
            }
        )

    def _create_version(
        self,
        adapter_dir: Path,
        name: str,
        tags: dict[str, str],
        digest: str,
        run_id: str | None,
        alias: str | None,
    ) -> int:
        own_run = run_id is None
        if not own_run:
            earlier = self._registered_by(run_id, name, tags)
            if earlier is not None:
                return self._complete_version(name, earlier, alias)
        run_id = run_id or self._new_run(name)
        created_model, version = False, None
        try:
            source = self._upload(adapter_dir, run_id, f"adapters/{name}-{digest[:12]}")
            created_model = self._ensure_model(name)
            # SQL registries create versions synchronously: nothing to wait for.
            created = self.client.create_model_version(
                name, source, run_id=run_id, tags=tags, await_creation_for=0
            )
            version = int(created.version)
            if alias is not None:
                self.client.set_registered_model_alias(name, alias, str(version))
            if own_run:
                self.client.set_terminated(run_id)
        except BaseException:
            self._roll_back(name, version, created_model, run_id if own_run else None)
            raise
        return version

    def _registered_by(self, run_id: str, name: str, tags: dict[str, str]) -> int | None:
        """The version of `name` that run `run_id` already registered with exactly these tags
        (content digest and metadata, which `create_model_version` sets with the version in one
        request); None when there is none. Tags tell a run's final adapter from a checkpoint of
        equal content (`gemlora.checkpoint_step`)."""
        found = mlflow_client.all_pages(
            lambda page_token: self.client.search_model_versions(
                filter_string=f"name = '{name}' AND run_id = '{run_id}'", page_token=page_token
            )
        )
        matches = [
            int(mv.version)
            for mv in found
            if all((mv.tags or {}).get(key) == value for key, value in tags.items())
        ]
        return min(matches, default=None)

    def _complete_version(self, name: str, version: int, alias: str | None) -> int:
        """Finish what an interrupted registration of `version` left undone: its alias."""
        self._registered_model(name)  # ours (gemlora.kind), as when it was created
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, str(version))
        logger.info("%s version %d was registered by this run before: completed it", name, version)
        return version

    def _new_run(self, name: str) -> str:
        run = self.client.create_run(self._experiment_id(), run_name=f"register-{name}")
        return run.info.run_id

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.config.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.config.experiment)
        except Exception as error:  # created meanwhile by another registration
            if mlflow_client.error_code(error) != "RESOURCE_ALREADY_EXISTS":
                raise
        return self.client.get_experiment_by_name(self.config.experiment).experiment_id

    def _upload(self, adapter_dir: Path, run_id: str, artifact_path: str) -> str:
        """Log the adapter files under `artifact_path` of the run; returns their URI. The path
        holds the digest, so a second registration in one run never overwrites the first."""
        for path in adapter_files(adapter_dir):
            self.client.log_artifact(run_id, str(path), artifact_path)
        return f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"

    def _ensure_model(self, name: str) -> bool:
        """Make sure registered model `name` exists and is ours; True when created here."""
        try:
            self.client.create_registered_model(
                name, tags={KIND_TAG: KIND}, description="LoRA adapter registered by gemlora"
            )
            return True
        except Exception as error:
            if mlflow_client.error_code(error) != "RESOURCE_ALREADY_EXISTS":
                raise
        self._registered_model(name)
        return False

    def _roll_back(
        self, name: str, version: int | None, created_model: bool, run_id: str | None
    ) -> None:
        steps = []
        if version is not None:
            steps.append(lambda: self.client.delete_model_version(name, str(version)))
        if created_model:
            steps.append(lambda: self._delete_model_if_empty(name))
        if run_id is not None:
            steps.append(lambda: self.client.delete_run(run_id))
        for step in steps:
            try:
                step()
            except Exception:
                logger.exception("rolling back the registration of %s left something behind", name)

    def _delete_model_if_empty(self, name: str) -> None:
        # Another registration may have added a version since we created the model.
        if not self._versions(name):
            self.client.delete_registered_model(name)

    # --- aliases and deletion -----------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> None:
        validate_alias(alias)
        version = validate_version(version)
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            self._registered_model(name)
            self._version(name, version)
            self.client.set_registered_model_alias(name, alias, str(version))
        self._forget(name)

    def delete_alias(self, name: str, alias: str) -> None:
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            model = self._registered_model(name)
            if alias not in model.aliases:
                raise AdapterNotFoundError(_no_alias(name, alias, model.aliases))
            self.client.delete_registered_model_alias(name, alias)
        self._forget(name)

    def promote(
        self,
        name: str,
        version: int | None = None,
        to: str | None = None,
        from_alias: str = CANDIDATE,
    ) -> int:
        """Point alias `to` (default: the default alias) at `version`, or at the version
        `from_alias` points at; returns the version."""
        to = validate_alias(to or self.config.default_alias)
        if version is None:
            with mlflow_client.mlflow_errors(self.config.tracking_uri):
                aliases = self._registered_model(name).aliases
            if from_alias not in aliases:
                raise AdapterNotFoundError(
                    f"{_no_alias(name, from_alias, aliases)}: pass the version to promote"
                )
            version = int(aliases[from_alias])
        self.set_alias(name, to, version)
        return int(version)

    def promote_if_better(
        self,
        name: str,
        version: int,
        metric: str,
        *,
        higher_is_better: bool = True,
        to: str | None = None,
        verification: PromotionRule = DEFAULT_PROMOTION_RULE,
    ) -> bool:
        """Promote `version` when its eval score `metric` beats the one `to` points at (or
        nothing holds `to`, or that version has no such score) and its verification meets
        `verification` (`gemlora.adapters.verification_record`; by default only a passed check
        does: an unverified version, or one whose check broke, stays where it is); True when it
        was promoted."""
        to = to or self.config.default_alias
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            candidate = self._version(name, version)
            if not allows_promotion(candidate.tags, verification):
                return False
            new = _score(candidate, metric)
            if new is None:
                raise AdapterError(
                    f"adapter {name!r} version {version} has no eval score {metric!r}"
                )
            current_version = self._registered_model(name).aliases.get(to)
            current = None
            if current_version is not None:
                current = _score(self._version(name, int(current_version)), metric)
        better = current is None or (new > current if higher_is_better else new < current)
        if better:
            self.set_alias(name, to, version)
        return better

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        """Record a fact about one version (e.g. the fidelity check's result)."""
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            self._version(name, version)  # a clear error for a missing version
            self.client.set_model_version_tag(name, str(version), key, value)
        self._forget(name)  # this registry's own lookups see the tag at once

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version; aliases pointing at it go with it."""
        version = validate_version(version)
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            self._registered_model(name)
            self._version(name, version)
            self.client.delete_model_version(name, str(version))
        self._forget(name)

    def delete_adapter(self, name: str) -> None:
        """Delete the adapter with every version and alias (the run artifacts stay)."""
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            self._registered_model(name)
            self.client.delete_registered_model(name)
        self._forget(name)

    # --- reading ------------------------------------------------------------------------------

    def list(self) -> list[AdapterSummary]:
        """Every gemlora adapter in the registry, by name."""
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            models = mlflow_client.all_pages(
                lambda page_token: self.client.search_registered_models(
                    filter_string=f"tags.`{KIND_TAG}` = '{KIND}'", page_token=page_token
                )
            )
            return sorted((self._summary(m) for m in models), key=lambda s: s.name)

    def show(self, name: str) -> AdapterDetails:
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            model = self._registered_model(name)
            return AdapterDetails(
                name=model.name,
                description=model.description or "",
                aliases={alias: int(v) for alias, v in model.aliases.items()},
                tags=dict(model.tags),
                versions=self._versions(name, model.aliases),
            )

    def lookup(self, ref: str) -> AdapterVersion:
        """The version a reference points at, without downloading it: what `resolve` uses,
        with the same TTL (e.g. to map `NAME@ALIAS` to an immutable `NAME/VERSION`)."""
        return self._lookup(parse_ref(ref))

    def resolve(
        self,
        ref: str,
        *,
        base: BaseSpec | str | None = None,
        max_lora_rank: int | None = None,
        vision_lora: bool = True,
    ) -> ResolvedAdapter:
        """A reference -> a verified local PEFT directory from the cache.

        `ref`: `NAME@ALIAS`, `NAME/VERSION`, or `NAME` (the default alias if set, else the
        newest version). Lookups are trusted for `alias_ttl_s`, so a moved alias is picked up
        within that time; when MLflow is unreachable, the last lookup is used. With `base`,
        the adapter is checked against it (and `max_lora_rank`; `vision_lora` False refuses
        vision-tower weights) and `IncompatibleAdapterError` says why it does not fit.
        Raises `AdapterNotFoundError` naming the missing part.
        """
        parsed = parse_ref(ref)
        version = self._lookup(parsed)
        with mlflow_client.mlflow_errors(self.config.tracking_uri):
            if version.digest is None:
                raise AdapterError(
                    f"adapter {parsed.name!r} version {version.version} has no gemlora content "
                    "digest: it was not registered through gemlora; register it again"
                )
            download = functools.partial(self._download, version.source)
            path = self.cache.get(parsed.name, version.version, version.digest, download)
        notes: list[str] = []
        if base is not None:
            spec = served_base(base)
            compatibility = self._check(path, version, spec, max_lora_rank, vision_lora)
            subject = f"adapter {ref} (version {version.version})"
            compatibility.raise_if_incompatible(subject, spec.name)
            notes = list(compatibility.notes)
        return ResolvedAdapter(
            ref=ref,
            name=parsed.name,
            version=version.version,
            path=path,
            digest=version.digest,
            metadata=version.metadata,
            aliases=version.aliases,
            notes=notes,
        )

    # --- lookups ------------------------------------------------------------------------------

    def _lookup(self, ref: AdapterRef) -> AdapterVersion:
        key, now = str(ref), time.monotonic()
        with self._lock:
            cached = self._lookups.get(key)
        if cached is not None and cached.expires > now:
            return cached.version
        try:
            with mlflow_client.mlflow_errors(self.config.tracking_uri):
                version = self._fetch(ref)
        except RegistryUnavailableError:
            if cached is None or now - cached.confirmed > self.config.stale_limit_s:
                raise
            logger.warning("MLflow unreachable: %s stays version %d", key, cached.version.version)
            return cached.version
        with self._lock:
            self._lookups[key] = _Lookup(version, now + self.config.alias_ttl_s, now)
        return version

    def _fetch(self, ref: AdapterRef) -> AdapterVersion:
        model = self._registered_model(ref.name)
        if ref.version is not None:
            return self._version(ref.name, ref.version)
        alias = ref.alias or self.config.default_alias
        if alias in model.aliases:
            return self._version(ref.name, int(model.aliases[alias]))
        if ref.alias is not None:
            raise AdapterNotFoundError(_no_alias(ref.name, ref.alias, model.aliases))
        versions = self._versions(ref.name, model.aliases)
        if not versions:
            raise AdapterNotFoundError(f"adapter {ref.name!r} has no versions")
        return versions[0]

    def _forget(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self._lookups if parse_ref(k).name == name]:
                del self._lookups[key]

    def _registered_model(self, name: str):
        validate_name(name)
        try:
            model = self.client.get_registered_model(name)
        except Exception as error:
            if mlflow_client.error_code(error) == "RESOURCE_DOES_NOT_EXIST":
                raise AdapterNotFoundError(
                    f"no adapter named {name!r} in the registry at {self.config.tracking_uri}"
                ) from None
            raise
        if model.tags.get(KIND_TAG) != KIND:
            raise AdapterNotFoundError(
                f"registered model {name!r} is not a gemlora adapter (no {KIND_TAG} tag)"
            )
        return model

    def _version(self, name: str, version: int) -> AdapterVersion:
        try:
            return _to_version(self.client.get_model_version(name, str(version)))
        except Exception as error:
            if mlflow_client.error_code(error) != "RESOURCE_DOES_NOT_EXIST":
                raise
        known = ", ".join(str(v.version) for v in reversed(self._versions(name))) or "none"
        raise AdapterNotFoundError(f"adapter {name!r} has no version {version} (versions: {known})")

    def _versions(self, name: str, aliases: dict[str, str] | None = None) -> list[AdapterVersion]:
        """Every version, newest first. MLflow's search leaves out aliases: pass the registered
        model's to have them filled in."""
        found = mlflow_client.all_pages(
            lambda page_token: self.client.search_model_versions(
                filter_string=f"name = '{name}'", page_token=page_token
            )
        )
        by_version: dict[int, list[str]] = {}
        for alias, number in (aliases or {}).items():
            by_version.setdefault(int(number), []).append(alias)
        versions = (_to_version(v, by_version.get(int(v.version), [])) for v in found)
        return sorted(versions, key=lambda v: v.version, reverse=True)

    def _summary(self, model) -> AdapterSummary:
        versions = self._versions(model.name, model.aliases)
        newest = versions[0] if versions else None
        return AdapterSummary(
            name=model.name,
            description=model.description or "",
            version_count=len(versions),
            latest_version=newest.version if newest else None,
            aliases={alias: int(v) for alias, v in model.aliases.items()},
            base=newest.metadata.base if newest and newest.metadata else None,
            updated_at=_timestamp(model.last_updated_timestamp),
        )

    # --- files --------------------------------------------------------------------------------

    def _download(self, source: str, destination: Path) -> None:
        mlflow_client.download(source, str(destination), self.config.tracking_uri)

    def _check(
        self,
        path: Path,
        version: AdapterVersion,
        base: BaseSpec,
        max_lora_rank: int | None,
        vision_lora: bool,
    ) -> Compatibility:
        trained_on = _training_base(version.metadata)
        key = (version.digest, base, max_lora_rank, trained_on, vision_lora)
        with self._lock:
            if key in self._checks:
                return self._checks[key]
        result = check_compatibility(path, base, max_lora_rank, trained_on, vision_lora)
        with self._lock:
            self._checks[key] = result
        return result


def _to_version(mv, aliases: list[str] | None = None) -> AdapterVersion:
    tags = dict(mv.tags or {})
    size = tags.get(SIZE_TAG)
    return AdapterVersion(
        name=mv.name,
        version=int(mv.version),
        aliases=sorted(mv.aliases or [] if aliases is None else aliases),
        digest=tags.get(DIGEST_TAG),
        size_bytes=int(size) if size else None,
        metadata=AdapterMetadata.from_tags(tags),
        run_id=mv.run_id or None,
        source=mv.source,
        description=mv.description or "",
        created_at=_timestamp(mv.creation_timestamp),
        tags=tags,
    )


def served_base(base: BaseSpec | str) -> BaseSpec:
    if isinstance(base, BaseSpec):
        return base
    try:
        return resolve_base(base)
    except LookupError as error:
        raise AdapterError(str(error)) from None


def _training_base(metadata: AdapterMetadata | None) -> TrainingBase | None:
    """The recorded training base; None leaves it to the adapter's own config."""
    if metadata is None:
        return None
    family = metadata.base_family
    if family is None:
        spec = lookup_base(metadata.base)
        family = spec.family if spec else None
    if family is None:
        return None
    return TrainingBase(metadata.base, family, metadata.base_quantization or "none")


def _score(version: AdapterVersion, metric: str) -> float | None:
    return version.metadata.eval_scores.get(metric) if version.metadata else None


def _no_alias(name: str, alias: str, aliases: dict) -> str:
    known = ", ".join(sorted(aliases)) or "none"
    return f"adapter {name!r} has no alias {alias!r} (aliases: {known})"


def _timestamp(millis: int | None) -> datetime:
    return datetime.fromtimestamp((millis or 0) / 1000, tz=UTC)
