"""What every entry point (``vae-train``, ``vae-eval``, ``python -m vae_experiments.train``) shares: the config
folder, and Hydra run so that its errors become one line.

Every failure before training is one line on stderr, ``error: <what>: <the fix>``, and exit status 2: Hydra's own
composition errors (an unknown option of a group, with the group's options; an unknown key; an override that does
not parse; a run folder that cannot be made), and the ``ConfigError`` of the checks in
``vae_experiments.config_checks`` (types and ranges of every option), which run before anything is built. Python
warnings go to the run's log file (``logging.captureWarnings``), not to stderr.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from vae_experiments import run_dirs
from vae_experiments.errors import ConfigError

# The config root beside the package (the product's layout); absolute, because Hydra reads a relative path against
# the *package* of an installed console script, where conf/ is not.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
# At import, not in main(): a submitit job process resolves its config after unpickling the task function (which
# imports this module) and never calls main().
run_dirs.register_uid_resolver()


class _Started:
    """Whether Hydra has handed the composed config to the task: failures before that are configuration errors."""

    task = False


def mark_started() -> None:
    """Called first by every task function: from here on an exception is the run's, not the command line's."""
    _Started.task = True


def fail(message: str) -> None:
    """The one line of a failure before training, then exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _option_list(text: str) -> list[str]:
    """The options Hydra lists after ``Available options in 'GROUP':`` (tab-indented lines)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Available options in")), None)
    if start is None:
        return []
    options = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        options.append(line.strip())
    return options


def hydra_error_line(exc: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while reading the command line or composing the config."""
    text = str(exc)
    if isinstance(exc, MissingConfigException) and (found := re.search(r"Could not find '([^']+)'", text)):
        group, _, name = found.group(1).rpartition("/")
        options = _option_list(text)
        if group and options:
            return f"{group}={name} is not an option of {group}: choose one of {', '.join(options)}"
        return f"no config {found.group(1)}: check the name (ls conf/{group or ''})"
    if isinstance(exc, OverrideParseException):
        reason = exc.message.splitlines()[0]
        return (
            f"cannot parse the override {exc.override!r} ({reason}): write key=value, close brackets and "
            "quotes, and quote a value with spaces or special characters: 'key=\"a b\"'"
        )
    if isinstance(exc, OSError) and not isinstance(exc, HydraException):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot create the run folder{where} ({exc.strerror or exc}): choose a writable hydra.run.dir=PATH"
    cause = exc.__cause__
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown and isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        key = unknown.group(1)
        parent = key.rpartition(".")[0]
        return (
            f"{key} is not a key of this config: check its spelling (vae-train --cfg job"
            f"{f' --package {parent}' if parent else ''} lists the keys), or add a new key with +{key}=VALUE"
        )
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("See https://", "Config search path", "provider="))]
    message = ": ".join(lines) or type(exc).__name__
    if isinstance(exc, OmegaConfBaseException) and not isinstance(exc, HydraException):
        message += ": fix that value on the command line"
    if type(exc) is ValueError:  # Hydra's own checks of an override's shape, before its grammar
        message = f"a malformed override ({message}): write each override as key=value"
    return message


def keep_library_logs_off_stderr() -> None:
    """Lightning's package logger prints to stderr and also hands its records to the root logger, which Hydra sends
    to the run's log file and stdout: drop its stderr copy (called once Lightning is imported, in a Hydra job)."""
    if not logging.getLogger().handlers:
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            lightning_logger.removeHandler(handler)


def run_entry_point(hydra_main: Callable[[], Any]) -> Any:
    """Run a ``hydra.main`` function with Hydra's errors raised (``HYDRA_FULL_ERROR``) instead of printed, so that
    each one before the task starts becomes one line and exit 2; a failure inside the task propagates unchanged.
    The process's settings are restored afterwards (the tests call entry points in their own process)."""
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # conf/hydra/launcher/submitit_slurm.yaml documents the plugin's fields and is checked against its schema
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated", category=UserWarning)
    logging.captureWarnings(True)
    # until Hydra configures logging (to the run's log file and stdout), warnings go nowhere rather than to stderr
    logging.getLogger("py.warnings").addHandler(logging.NullHandler())
    try:
        return hydra_main()
    except ConfigError as exc:
        fail(str(exc))
    except (HydraException, OmegaConfBaseException, OSError, ValueError) as exc:
        if _Started.task:
            raise
        fail(hydra_error_line(exc))
    finally:
        _Started.task = False
        logging.captureWarnings(False)
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
