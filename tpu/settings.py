"""Launch settings (project, zone, bucket, accelerator, capacity, …) from a small TOML/JSON file and flags.

Example `tpu.toml`:
    project = "my-project"
    zone = "us-west4-a"
    bucket = "gs://my-bucket/moe-jax"
    accelerator = "v5litepod-16"
    capacity = "spot"              # on-demand | spot | flex | reserved
    [labels]
    team = "scaling"
    [zones]                        # optional: zones offering a family, replacing the built-in list
    v5litepod = ["us-west4-a"]
    [sizes]                        # optional: the slice sizes N of a family, replacing the built-in list
    v5litepod = [1, 4, 8, 16]
Flags given on the command line win over the file. Every check raises a one-line UserError.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field

from moe_jax.errors import UserError
from moe_jax.paths import user_path
from moe_jax.tpu.accelerators import (DEFAULT_SIZES, DEFAULT_ZONES, RUNTIME_VERSIONS, Accelerator,
                                      check_runtime_version, check_size, check_zone, parse_accelerator)

CAPACITIES = ("on-demand", "spot", "flex", "reserved")
OUR_LABEL = ("created-by", "moe-jax")  # on every resource we create; `delete` touches nothing without it
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_BUCKET = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")


@dataclass
class Settings:
    project: str = ""  # Google Cloud project id
    zone: str = ""  # e.g. us-west4-a; must offer the accelerator's family
    bucket: str = ""  # gs://bucket[/prefix]: run workdirs go to BUCKET/runs/RUN
    accelerator: str = ""  # slice type, e.g. v5litepod-16, v5p-32, v6e-8, v4-16
    runtime_version: str = ""  # TPU VM image; '' = the one the family needs
    capacity: str = "on-demand"  # on-demand | spot | flex (flex-start, alpha API) | reserved
    max_run_duration: str = "24h"  # flex-start only: how long the slice lives (at most 7d)
    labels: dict = field(default_factory=dict)  # extra labels; created-by=moe-jax is always added
    zones: dict = field(default_factory=dict)  # family -> zones offering it; replaces the built-in list
    sizes: dict = field(default_factory=dict)  # family -> slice sizes N it offers; replaces the built-in list
    cluster: str = ""  # xpk backend: the existing GKE cluster
    docker_image: str = ""  # xpk backend: an image with moe_jax installed ('' = build from python:3.11 + wheel)


FIELDS = tuple(f.name for f in dataclasses.fields(Settings))


def read_settings_file(path: str) -> dict:
    """The key/values of a .toml or .json settings file; UserError for a missing/bad file or unknown key."""
    file = user_path(path)  # local or gs://
    if not file.is_file():
        raise UserError(f"settings file not found: {path!r}")
    try:
        text = file.read_text()
        values = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"cannot parse settings file {path!r}: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise UserError(f"settings file {path!r} must hold a table of keys; valid keys: {', '.join(FIELDS)}")
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in settings file {path!r}; valid keys: {', '.join(FIELDS)}")
    return values


def make_settings(path: str | None, flags: dict) -> Settings:
    """Settings from the file at `path` (if any) with the non-None `flags` on top."""
    values = read_settings_file(path) if path else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if not all(isinstance(values.get(k, {}), dict) for k in ("labels", "zones", "sizes")):
        raise UserError("settings 'labels', 'zones' and 'sizes' must be tables, e.g. [labels] team = \"x\"")
    return Settings(**values)


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """['team=x', 'exp=e1'] -> {'team': 'x', 'exp': 'e1'} (UserError for a part without '=')."""
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"bad --label {pair!r}; use KEY=VALUE (lowercase letters, digits, - and _)")
        labels[key] = value
    return labels


def all_labels(settings: Settings) -> dict[str, str]:
    """The settings' labels plus ours, each checked against Google Cloud's label rules."""
    labels = {**{str(k): str(v) for k, v in settings.labels.items()}, OUR_LABEL[0]: OUR_LABEL[1]}
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise UserError(f"bad label {key}={value!r}; keys start with a lowercase letter and keys and values "
                            f"use only lowercase letters, digits, - and _ (at most 63)")
    return labels


def require(settings: Settings, *names: str) -> None:
    """UserError naming the first of `names` that is unset."""
    for name in names:
        if not getattr(settings, name):
            raise UserError(f"missing {name.replace('_', ' ')}: pass --{name.replace('_', '-')} or set "
                            f"{name} in the settings file (--settings tpu.toml)")


def check_bucket(bucket: str, what: str = "bucket") -> None:
    """UserError unless `bucket` is gs://NAME[/prefix] with a valid bucket NAME (Cloud Storage naming rules)."""
    if not bucket.startswith("gs://"):
        raise UserError(f"{what} {bucket!r} is not a Cloud Storage path; use gs://BUCKET[/PREFIX]")
    name = bucket[len("gs://"):].split("/", 1)[0]
    dotted = "." in name  # dotted names may reach 222 characters, 63 per dot-separated part
    if not (_BUCKET.fullmatch(name) and 3 <= len(name) <= (222 if dotted else 63)
            and all(len(part) <= 63 for part in name.split("."))):
        raise UserError(f"{what} {bucket!r}: bucket name {name!r} must be 3-63 characters of lowercase letters, "
                        f"digits, '-', '_' and '.', starting and ending with a letter or digit")


def checked_accelerator(settings: Settings) -> Accelerator:
    """The settings' accelerator, after checking project/zone, runtime version, zone, capacity and bucket.

    Fills in `settings.runtime_version` from the family when it is unset.
    """
    require(settings, "project", "zone", "accelerator")
    accelerator = parse_accelerator(settings.accelerator)
    settings.runtime_version = settings.runtime_version or RUNTIME_VERSIONS[accelerator.family]
    check_runtime_version(accelerator, settings.runtime_version)
    sizes = {**DEFAULT_SIZES, **{k: tuple(v) for k, v in settings.sizes.items()}}
    check_size(accelerator, sizes)
    zones = {**DEFAULT_ZONES, **{k: tuple(v) for k, v in settings.zones.items()}}
    check_zone(accelerator, settings.zone, zones)
    if settings.capacity not in CAPACITIES:
        raise UserError(f"unknown capacity {settings.capacity!r}; use one of {', '.join(CAPACITIES)}")
    if settings.bucket:
        check_bucket(settings.bucket)
    return accelerator
