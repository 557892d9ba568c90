"""Cluster profiles: where a job runs, written once as YAML and selected by name (``--profile``).

A profile file holds one ``kind``: ``local`` (a LocalCluster on this machine), ``scheduler`` (join
a running cluster by address), ``slurm`` / ``pbs`` (workers submitted as batch jobs through
dask-jobqueue) or ``kubernetes`` (a DaskCluster through the dask-kubernetes operator), plus that
kind's fields and an optional ``security`` block (mutual TLS with certificate files).

A name is looked up, first match wins, in the folders of ``$COHORT_ENGINE_PROFILES``
(``os.pathsep``-separated), ``./cluster/``, ``~/.config/cohort-engine/cluster/`` and the profiles
shipped with the package (the repository's ``cluster/`` folder). A path to a ``.yaml`` / ``.yml``
file is read as it is. This module only reads and validates; ``engine.cluster.deploy`` starts
what a profile describes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from dask.utils import parse_bytes, parse_timedelta
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter,
                      ValidationError, ValidationInfo, field_validator, model_validator)

from engine.errors import InputError
from engine.fsutil import read_yaml_mapping

#: environment variable naming extra profile folders, searched before all others
PROFILES_VARIABLE = "COHORT_ENGINE_PROFILES"
USER_PROFILES = Path("~/.config/cohort-engine/cluster")
#: where the wheel carries the repository's cluster/ folder (hatch force-include)
BUNDLED_PROFILES = Path(__file__).parent / "profiles_bundled"
#: the same folder in a source checkout or editable install
CHECKOUT_PROFILES = Path(__file__).resolve().parents[2] / "cluster"
PROFILE_SUFFIXES = (".yaml", ".yml")
KINDS = ("local", "scheduler", "slurm", "pbs", "kubernetes")
#: the dashboard listens on loopback unless a profile says otherwise (reach it with ssh -L)
LOOPBACK_DASHBOARD = "127.0.0.1:8787"


# -- field types --------------------------------------------------------------------------------

def _byte_size(value: str | int) -> str | int:
    """A memory size dask understands ("4GiB", "16 GB", 2**30), checked now, kept as written."""
    try:
        parse_bytes(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a memory size (write e.g. '4GiB' or '16GB')") from None
    return value


def _memory_limit(value: str | int) -> str | int:
    return value if value == "auto" else _byte_size(value)


def _duration(value: str | float) -> str | float:
    """A duration dask understands ("55m", "1h", 30), checked now, kept as written."""
    try:
        parse_timedelta(value, default="seconds")
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{value!r} is not a duration (write e.g. '55m', '1h' or '30s')") from None
    return value


def _host_port(value: str) -> str:
    """``HOST:PORT`` or ``:PORT`` (all interfaces); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT (write e.g. '127.0.0.1:8787')")
    return value


ByteSize = Annotated[str | int, AfterValidator(_byte_size)]
MemoryLimit = Annotated[str | int, AfterValidator(_memory_limit)]
Duration = Annotated[str | float, AfterValidator(_duration)]
HostPort = Annotated[str, AfterValidator(_host_port)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLS(_Model):
    """Mutual TLS: every party (client, scheduler, workers) presents ``cert`` and trusts only
    certificates signed by ``ca_file``. Relative paths are relative to the profile's folder;
    ``~`` and ``$VARIABLES`` are expanded."""

    ca_file: Path = Field(description="PEM certificate of the authority every party trusts")
    cert: Path = Field(description="PEM certificate signed by ca_file, used by every party")
    key: Path = Field(description="PEM private key of cert (unencrypted; keep it mode 600)")
    require_encryption: bool = Field(default=True, description="refuse unencrypted connections")

    @field_validator("ca_file", "cert", "key", mode="after")
    @classmethod
    def _relative_to_profile(cls, path: Path, info: ValidationInfo) -> Path:
        path = Path(os.path.expandvars(str(path))).expanduser()
        folder = (info.context or {}).get("folder")
        return folder / path if folder is not None and not path.is_absolute() else path


class _Profile(_Model):
    security: TLS | None = Field(default=None, description="mutual TLS (certificate files)")
    _name: str | None = PrivateAttr(default=None)
    _source: Path | None = PrivateAttr(default=None)

    @property
    def profile_name(self) -> str:
        """The name it was loaded by (its file's stem), or its kind when built in Python."""
        return self._name or self.kind

    @property
    def source(self) -> Path | None:
        """The YAML file it was read from (None when built in Python)."""
        return self._source


# -- kinds --------------------------------------------------------------------------------------

class LocalProfile(_Profile):
    """A LocalCluster on this machine (what ``cohort run`` starts without a profile)."""

    kind: Literal["local"]
    workers: int | None = Field(default=None, ge=1, description="worker processes (default: "
                                "one per core; one when processes is false)")
    threads_per_worker: int | None = Field(default=None, ge=1, description="default: cores / "
                                           "workers")
    memory_limit: MemoryLimit = Field(default="auto", description="per worker, e.g. '4GiB'; "
                                      "'auto' shares the machine's memory among the workers")
    processes: bool = Field(default=True, description="false: threads in this process")
    dashboard_address: HostPort = LOOPBACK_DASHBOARD
    local_directory: Path | None = Field(default=None, description="where workers spill to disk")

    @field_validator("local_directory", mode="after")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return None if path is None else Path(os.path.expandvars(str(path))).expanduser()


class SchedulerProfile(_Profile):
    """A cluster someone already runs (``dask scheduler`` / ``dask worker``, a Helm chart...)."""

    kind: Literal["scheduler"]
    address: str = Field(description="tcp://HOST:PORT, or tls://HOST:PORT with security")
    timeout: Duration = Field(default="30s", description="how long to wait for the scheduler")

    @model_validator(mode="after")
    def _protocol_matches_security(self):
        protocol, sep, _ = self.address.partition("://")
        if not sep or protocol not in ("tcp", "tls"):
            raise ValueError(f"address {self.address!r} must start with tcp:// or tls://")
        if protocol == "tls" and self.security is None:
            raise ValueError(f"address {self.address} is tls:// and needs a security block "
                             "(ca_file, cert, key)")
        if protocol == "tcp" and self.security is not None and self.security.require_encryption:
            raise ValueError(f"the security block requires encryption but address "
                             f"{self.address} is tcp:// (use tls://)")
        return self


class AdaptiveJobs(_Model):
    minimum_jobs: int = Field(default=0, ge=0)
    maximum_jobs: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.minimum_jobs > self.maximum_jobs:
            raise ValueError(f"minimum_jobs {self.minimum_jobs} exceeds maximum_jobs "
                             f"{self.maximum_jobs}")
        return self


class WorkerLifetime(_Model):
    """Retire each worker before the queue's walltime kills its job (dask-jobqueue's recipe:
    ``--lifetime`` below the walltime, ``--lifetime-stagger`` so they do not all leave at once,
    with adaptive scaling submitting replacement jobs)."""

    lifetime: Duration = Field(description="e.g. '55m' for a 1-hour walltime")
    stagger: Duration = Field(default=0, description="each worker's lifetime is drawn from "
                              "lifetime +/- stagger")
    restart: bool = Field(default=False, description="restart the worker inside the same job "
                          "after its lifetime (--lifetime-restart); leave false when the job's "
                          "walltime is the reason for the lifetime")


class _JobQueueProfile(_Profile):
    """Workers started by batch jobs (dask-jobqueue); the scheduler runs in this process."""

    queue: str | None = None
    account: str | None = None
    cores: int = Field(ge=1, description="cores per job")
    processes: int | None = Field(default=None, ge=1, description="worker processes per job "
                                  "(default: about sqrt(cores))")
    memory: ByteSize = Field(description="memory per job, shared by its worker processes")
    walltime: str | None = None
    job_script_prologue: list[str] = Field(default_factory=list, description="shell lines run "
                                           "before the worker starts (module load, venv...)")
    job_extra_directives: list[str] = Field(default_factory=list, description="extra batch "
                                            "directives, e.g. '--qos=long'")
    worker_extra_args: list[str] = Field(default_factory=list)
    interface: str | None = Field(default=None, description="network interface (e.g. ib0) the "
                                  "scheduler and workers use")
    local_directory: str | None = Field(default=None, description="spill directory on the "
                                        "compute node ($TMPDIR expands there)")
    log_directory: str | None = None
    python: str | None = Field(default=None, description="the workers' python (default: the "
                               "one running the engine)")
    jobs: int | None = Field(default=None, ge=1, description="a fixed number of jobs")
    adaptive: AdaptiveJobs | None = Field(default=None, description="jobs follow the load")
    worker_lifetime: WorkerLifetime | None = None
    dashboard_address: HostPort = LOOPBACK_DASHBOARD

    def walltime_seconds(self) -> float | None:
        """The walltime in seconds (read as this queue system reads it), None if unset or
        unlimited."""
        if self.walltime is None:
            return None
        read = slurm_walltime_seconds if self.kind == "slurm" else pbs_walltime_seconds
        return read(self.walltime)

    @model_validator(mode="after")
    def _consistent(self):
        if (self.jobs is None) == (self.adaptive is None):
            raise ValueError("give either jobs (a fixed number) or adaptive (minimum_jobs, "
                             "maximum_jobs), exactly one")
        if self.processes is not None and self.processes > self.cores:
            raise ValueError(f"processes {self.processes} exceeds cores {self.cores}")
        self.walltime_seconds()  # a malformed walltime fails here, not at sbatch/qsub
        if self.worker_lifetime is not None:
            self._check_lifetime(self.worker_lifetime)
        return self

    def _check_lifetime(self, life: WorkerLifetime) -> None:
        if self.adaptive is None and not life.restart:
            raise ValueError("worker_lifetime retires workers for good; use adaptive (not jobs) "
                             "so that replacement jobs are submitted")
        walltime = self.walltime_seconds()
        longest = parse_timedelta(life.lifetime, "seconds") + parse_timedelta(life.stagger,
                                                                              "seconds")
        if walltime is not None and longest >= walltime:
            raise ValueError(f"worker_lifetime {life.lifetime} + stagger {life.stagger} reaches "
                             f"the walltime {self.walltime}: the queue would kill workers before "
                             "they retire (make lifetime + stagger shorter than walltime)")


def _clock_seconds(parts: list[str], text: str, system: str) -> float:
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"walltime {text!r} is not a {system} time (write e.g. '01:00:00')")
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return seconds


def slurm_walltime_seconds(text: str) -> float | None:
    """SLURM's ``--time``: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS; None if unlimited."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, dash, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = clock.split(":")
    if not days.isdigit() or not 1 <= len(parts) <= 3:
        raise ValueError(f"walltime {text!r} is not a SLURM time (write e.g. '01:00:00' or "
                         "'1-12:00:00')")
    if dash:  # D-HH[:MM[:SS]]: hours first
        parts = parts + ["0"] * (3 - len(parts))
    elif len(parts) <= 2:  # MM or MM:SS: minutes first
        parts = ["0"] + parts + ["0"] * (2 - len(parts))
    return int(days) * 86400 + _clock_seconds(parts, text, "SLURM")


def pbs_walltime_seconds(text: str) -> float:
    """PBS's ``walltime``: [[[DD:]HH:]MM:]SS."""
    parts = text.split(":")
    if len(parts) > 4:
        raise ValueError(f"walltime {text!r} is not a PBS time (write e.g. '01:00:00')")
    days = int(parts.pop(0)) * 86400 if len(parts) == 4 and parts[0].isdigit() else 0
    return days + _clock_seconds(parts, text, "PBS")


class SlurmProfile(_JobQueueProfile):
    kind: Literal["slurm"]


class PBSProfile(_JobQueueProfile):
    kind: Literal["pbs"]
    resource_spec: str | None = Field(default=None, description="'-l' resources, e.g. "
                                      "'select=1:ncpus=24:mem=100GB' (default: from cores and "
                                      "memory)")


class KubernetesResources(_Model):
    requests: dict[str, str | int] | None = None
    limits: dict[str, str | int] | None = None


class AdaptiveWorkers(_Model):
    minimum: int = Field(default=0, ge=0)
    maximum: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} exceeds maximum {self.maximum}")
        return self


#: the operator's own rule for DaskCluster names (an RFC 1123 label leaving room for suffixes)
CLUSTER_NAME = re.compile(r"^(?=.{1,40}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class KubernetesProfile(_Profile):
    """A DaskCluster resource handled by the dask-kubernetes operator: scheduler and workers run
    in pods of ``image`` (see cluster/Dockerfile); the dashboard is reached with kubectl
    port-forward."""

    kind: Literal["kubernetes"]
    name: str = Field(default="cohort-engine", description="DaskCluster name (lower case, "
                      "digits, '-')")
    namespace: str | None = Field(default=None, description="default: the current context's")
    image: str = Field(description="an image with cohort-engine installed (cluster/Dockerfile)")
    n_workers: int = Field(default=2, ge=0, description="workers at start")
    resources: KubernetesResources | None = Field(default=None, description="per worker pod")
    scheduler_resources: KubernetesResources | None = Field(
        default=None, description="the scheduler pod's (default: same as resources)")
    env: dict[str, str] = Field(default_factory=dict)
    worker_command: list[str] = Field(default_factory=lambda: ["dask", "worker"])
    scheduler_service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="ClusterIP keeps scheduler and dashboard inside the "
        "cluster (reach them with kubectl port-forward)")
    adaptive: AdaptiveWorkers | None = None

    @field_validator("name")
    @classmethod
    def _cluster_name(cls, name: str) -> str:
        if not CLUSTER_NAME.match(name):
            raise ValueError(f"{name!r} is not a DaskCluster name (lower-case letters, digits "
                             "and '-', at most 40 characters)")
        return name

    @field_validator("worker_command", mode="before")
    @classmethod
    def _split_command(cls, command):
        return command.split() if isinstance(command, str) else command

    @model_validator(mode="after")
    def _no_tls(self):
        if self.security is not None:
            raise ValueError("security: the dask-kubernetes operator does not support TLS "
                             "between its controller and the scheduler; run a TLS scheduler "
                             "yourself and use kind: scheduler with address tls://...")
        return self


Profile = Annotated[LocalProfile | SchedulerProfile | SlurmProfile | PBSProfile | KubernetesProfile,
                    Field(discriminator="kind")]
PROFILE_TYPES = (LocalProfile, SchedulerProfile, SlurmProfile, PBSProfile, KubernetesProfile)
_PROFILE = TypeAdapter(Profile)


# -- lookup -------------------------------------------------------------------------------------

def profile_folders() -> list[tuple[str, Path]]:
    """Where names are looked up, in order, as (label for messages, folder)."""
    folders = [(f"${PROFILES_VARIABLE}", Path(p).expanduser())
               for p in os.environ.get(PROFILES_VARIABLE, "").split(os.pathsep) if p]
    folders += [("./cluster", Path.cwd() / "cluster"), (str(USER_PROFILES),
                                                         USER_PROFILES.expanduser())]
    if BUNDLED_PROFILES.is_dir():
        folders.append(("bundled", BUNDLED_PROFILES))
    elif (CHECKOUT_PROFILES.parent / "pyproject.toml").is_file():
        folders.append(("bundled", CHECKOUT_PROFILES))
    return folders


def available_profiles() -> dict[str, Path]:
    """Every profile name that can be given, with the file it resolves to (first match wins)."""
    found: dict[str, Path] = {}
    for _, folder in profile_folders():
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in PROFILE_SUFFIXES and path.is_file():
                    found.setdefault(path.stem, path)
    return found


def _is_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return (isinstance(name_or_path, Path) or text.endswith(PROFILE_SUFFIXES) or os.sep in text
            or (os.altsep is not None and os.altsep in text))


def find_profile(name_or_path: str | Path) -> Path:
    """The profile file a name or path refers to; InputError naming what was searched."""
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise InputError(f"cluster profile file {path} does not exist")
        return path
    found = available_profiles()
    if name_or_path in found:
        return found[name_or_path]
    where = ", ".join(f"{label} ({folder})" if label != str(folder) else label
                      for label, folder in profile_folders())
    names = ", ".join(sorted(found)) or "none"
    raise InputError(f"unknown cluster profile {name_or_path!r}: found {names}; looked in "
                     f"{where} (give one of those names or a path to a .yaml file)")


def _read_mapping(path: Path) -> dict:
    return read_yaml_mapping(path, "cluster profile", "kind: " + " | ".join(KINDS))


def _model_at(model: type[BaseModel] | None, path: list) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` below ``model`` (None if none)."""
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        candidates = [a for a in getattr(field.annotation, "__args__", (field.annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return model


def _problem(error: dict, raw: dict) -> str:
    """One validation error as 'field: what is wrong', the union tag dropped from its place."""
    kind = raw.get("kind")
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        given = "is missing" if kind is None else f"{kind!r} is not a profile kind"
        return f"kind {given} (choose from {', '.join(KINDS)})"
    loc = list(error["loc"])
    model = {m.model_fields["kind"].annotation.__args__[0]: m for m in PROFILE_TYPES}.get(kind)
    if loc and loc[0] == kind:
        loc.pop(0)
    where = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = "" if parent is None else f" (allowed: {', '.join(parent.model_fields)})"
        return f"unknown field {where!r}{allowed}"
    if error["type"] == "missing":
        return f"field {where!r} is required"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def profile_from_mapping(raw: dict, *, folder: Path | None = None, source: str = "<mapping>",
                         name: str | None = None):
    """Validate a profile given as a mapping; relative TLS paths are relative to ``folder``."""
    try:
        profile = _PROFILE.validate_python(raw, context={"folder": folder})
    except ValidationError as e:
        problems = "; ".join(dict.fromkeys(_problem(err, raw) for err in e.errors()))
        raise InputError(f"cluster profile {source}: {problems}") from None
    profile._name = name
    return profile


def load_profile(name_or_path: str | Path):
    """The validated profile a name (see ``profile_folders``) or a YAML path refers to."""
    path = find_profile(name_or_path)
    profile = profile_from_mapping(_read_mapping(path), folder=path.absolute().parent,
                                   source=str(path), name=path.stem)
    profile._source = path
    return profile


def as_profile(profile):
    """A loaded profile as it is; a name or path loaded."""
    return profile if isinstance(profile, PROFILE_TYPES) else load_profile(profile)
