"""One validation pass over the composed config, before anything is built and before torch is imported.

Every option of every group is checked in two ways:

* its type: the value must have the type of the option's value in the group's own YAML file (``conf/GROUP/NAME``,
  the option Hydra chose, found in ``hydra.runtime.choices``): an integer stays an integer (``trainer.max_epochs=2.5``
  is refused), a float stays a finite number (``nan`` is refused), ``true``/``false`` stay booleans
  (``logger.wandb.offline=maybe`` is refused);
* its range or its list of choices, where ``config_rules.RULES`` names one (``optimizer.lr > 0``,
  ``dataset.batch_size >= 1``, ``dataset.binarize`` in none/static/dynamic, ...). A rule decides the type of its key
  by itself.

Then what only the whole config tells: FID's Inception weights present when FID runs, a reachable wandb server
unless ``logger.wandb.offline=true``, a readable ``ckpt_path``. The parts check what needs the data's shape when they
are built (``check_against_data``: a low-rank likelihood's rank within the data's dimension) and the splits check
their sizes against the data (``data.memory.split_images``). Every problem is a ``ConfigError``: one line,
``KEY=VALUE: what is wrong: the fix``.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_experiments.config_rules import as_yaml, rule_for
from vae_experiments.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"
# groups whose files override other groups (not a node of their own)
NOT_A_NODE = ("hydra", "experiment", "hparams_search", "debug")
WANDB_TIMEOUT_S = 3.0
# the values of a schedule (``vae_experiments.schedules``) that stand for the number it replaces
SCHEDULED = ("start", "end", "value")
ABSENT = object()


def is_node(value: Any) -> bool:
    """A sub-config that is a constructor call of its own (a schedule in place of a number, say)."""
    return isinstance(value, DictConfig) and "_target_" in value


def leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, unresolved value)`` of every option under ``node`` (constructor targets left out)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key in node:
            if key in ("_target_", "_partial_", "_recursive_", "_convert_", "defaults"):
                continue
            yield from leaves(node[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def value_at(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key``; an interpolation that cannot resolve is a ``ConfigError``."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{key}: {first}: fix that value (or its interpolation) on the command line") from None


def reference(group: str, option: str) -> DictConfig | None:
    """The option's own YAML file, merged over the files of its group it names in its defaults list."""
    path = CONF / group / f"{option}.yaml"
    if not path.is_file():
        return None
    own = OmegaConf.load(path)
    merged = OmegaConf.create()
    for entry in own.get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            base = reference(group, entry)
            if base is not None:
                merged = OmegaConf.merge(merged, base)
    return OmegaConf.merge(merged, own)


def chosen_nodes(choices: Mapping[str, Any]) -> Iterator[tuple[str, DictConfig]]:
    """``(node path, reference)`` for every group option Hydra chose (``hydra.runtime.choices``)."""
    for name, option in choices.items():
        group, _, package = str(name).partition("@")
        if option is None or group.split("/")[0] in NOT_A_NODE:
            continue
        ref = reference(group, str(option))
        if ref is not None:
            yield (package or group.replace("/", ".")), ref


def problem(key: str, value: Any, want: str, example: Any = None) -> ConfigError:
    hint = f" (the default is {as_yaml(example)})" if example is not None else ""
    return ConfigError(f"{key}={as_yaml(value)} is not {want}: set {key} to {want}{hint}")


def check_value(key: str, value: Any, ref: Any) -> None:
    """``value`` against the rule for ``key``, else against the type of ``ref`` (its YAML default)."""
    rule = rule_for(key)
    if is_node(value):  # a schedule's values are held to the rule of the number it replaces
        for sub, _ in leaves(value, key):
            sub_value = OmegaConf.select(value, sub[len(key) + 1 :])
            check_value(sub, sub_value, None)
            if rule is not None and sub.rsplit(".", 1)[1] in SCHEDULED and not rule.accepts(sub_value):
                raise problem(sub, sub_value, rule.want())
        return
    if rule is not None:
        if not rule.accepts(value):
            raise problem(key, value, rule.want(), ref)
        return
    if ref is None or isinstance(ref, dict) or ref == "???":
        return
    if isinstance(ref, bool):
        accepted, want = isinstance(value, bool), "true or false"
    elif isinstance(ref, int):
        accepted, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(ref, float):
        accepted = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        want = "a finite number"
    elif isinstance(ref, str):
        accepted, want = isinstance(value, str), "a string"
    elif isinstance(ref, ListConfig | list):
        accepted, want = isinstance(value, ListConfig | list), "a list"
    else:
        return
    if not accepted:
        raise problem(key, value, want, ref)


def check_node(cfg: DictConfig, path: str, ref: DictConfig) -> None:
    """Every option of ``ref`` (a group file) at ``path`` in ``cfg``: its rule, else the type of its default."""
    for key, ref_value in leaves(ref, path):
        if OmegaConf.select(cfg, key, default=ABSENT, throw_on_resolution_failure=False) is ABSENT:
            continue  # an option the experiment removed (~key)
        if isinstance(ref_value, str) and ref_value.startswith("${"):
            ref_value = None  # an interpolation's type is its target's
        check_value(key, value_at(cfg, key), ref_value)


def check_ranges(cfg: DictConfig) -> None:
    """Every key with a rule, wherever it came from (a group file, an experiment, ``+key=value``)."""
    for key, _ in leaves(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), ""):
        if rule_for(key) is not None:
            check_value(key, value_at(cfg, key), None)


def check_train_config(cfg: DictConfig) -> None:
    """The whole pass for ``vae-train``; raises the first problem as a ``ConfigError``."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    check_node(cfg, "", reference_of_root("train"))
    for path, ref in chosen_nodes(choices):
        check_node(cfg, path, ref)
    check_run_config(cfg)
    check_wandb(cfg)
    check_ckpt_path(cfg.get("ckpt_path"))


def reference_of_root(name: str) -> DictConfig:
    ref = OmegaConf.load(CONF / f"{name}.yaml")
    return OmegaConf.masked_copy(ref, [k for k in ref if k not in ("defaults", "hydra")])


def check_run_config(cfg: DictConfig) -> None:
    """Ranges and the cross-checks, for any run config (``vae-eval`` passes a saved run's, with its overrides)."""
    check_ranges(cfg)
    check_splits(cfg)
    check_fid(cfg)


def check_eval_config(cfg: DictConfig) -> None:
    """``vae-eval``'s own options: ``ckpt_path`` (set, readable), ``eval.*`` ranges, ``overrides`` a list of
    ``key=value``."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError("ckpt_path is not set: pass ckpt_path=RUN/checkpoints/last.ckpt of a vae-train run")
    check_node(cfg, "", reference_of_root("eval"))
    check_ranges(cfg)
    check_ckpt_path(cfg.ckpt_path)
    overrides = cfg.get("overrides")
    if not isinstance(overrides, ListConfig) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(
            f"overrides={overrides} is not a list of key=value: write overrides=[seed=1,eval.elbo_samples=8]"
        )


def check_splits(cfg: DictConfig) -> None:
    """Sizes known from the config alone (a synthetic set's counts); a file set's are checked when it is split."""
    data = cfg.get("dataset")
    if not isinstance(data, DictConfig) or "n_train" not in data or "val_size" not in data:
        return
    if data.val_size >= data.n_train:
        raise ConfigError(
            f"dataset.val_size={data.val_size} leaves no training data of dataset.n_train={data.n_train}: "
            f"set dataset.val_size below {data.n_train}"
        )


def check_against_data(cfg: DictConfig, data_shape: tuple[int, ...]) -> None:
    """What needs the data's shape, before a part is built: a low-rank likelihood's rank at most the data's dimension
    (a larger one builds a decoder head of rank x dimension outputs and fails for memory)."""
    dimension = math.prod(data_shape)
    rank = cfg.likelihood.get("rank") if isinstance(cfg.get("likelihood"), DictConfig) else None
    if isinstance(rank, int) and rank > dimension:
        raise ConfigError(
            f"likelihood.rank={rank} exceeds the data's dimension {dimension} ({'x'.join(map(str, data_shape))}): "
            f"set likelihood.rank <= {dimension}"
        )


def check_fid(cfg: DictConfig) -> None:
    """FID runs after training: its Inception weights must be there before training starts."""
    fid = OmegaConf.select(cfg, "eval.fid")
    if not isinstance(fid, DictConfig) or not fid.get("enabled"):
        return
    from vae_experiments.metrics.inception import require_weights  # torch: only when FID is on

    require_weights(fid.get("weights"))


@cache
def reachable(host: str, port: int, timeout: float = WANDB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (name lookup included, which
    ``socket``'s own timeout does not bound: it runs in a thread that is abandoned when late)."""
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def check_wandb(cfg: DictConfig) -> None:
    """An online wandb logger needs its server: without one, say so in seconds instead of after wandb's retries."""
    wandb = OmegaConf.select(cfg, "logger.wandb")
    if not isinstance(wandb, DictConfig) or wandb.get("offline") is True:
        return
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (80 if url.scheme == "http" else 443)
    if not reachable(url.hostname or "api.wandb.ai", port):
        raise ConfigError(
            f"logger=wandb cannot reach {url.hostname}:{port}: add logger.wandb.offline=true "
            "(and sync later with wandb sync RUN/wandb/offline-run-*)"
        )


def check_ckpt_path(ckpt_path: Any) -> None:
    """A checkpoint to resume or evaluate exists and can be read (its contents are checked against the model once
    it is built: ``checkpoint_checks``)."""
    if ckpt_path in (None, "last"):
        return
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such file: pass RUN/checkpoints/last.ckpt of a vae-train run")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"ckpt_path={ckpt_path} cannot be read (permissions): make it readable, or copy it")
    if path.stat().st_size == 0:
        raise ConfigError(f"ckpt_path={ckpt_path} is empty: pass a complete checkpoint (RUN/checkpoints/last.ckpt)")
