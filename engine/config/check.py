"""Config mistakes caught before Hydra runs a job: each one is a single UserError line naming the key.

The command line is composed with Hydra's compose API (every value of a multirun sweep) and checked like a
run's config, so a typo, a wrong type or a value refused by a dataclass in engine/config/schema.py stops the command
before Hydra creates or writes anything in a run folder. Keys are checked against the dataclasses too, which
Hydra alone does not do for keys added with `+` (the `kwargs` dict fields take any key).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import io
import itertools
import math
import typing
from collections.abc import Callable
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from engine.config.cross import check_combination
from engine.config.schema import RunConfig
from engine.core.errors import UserError

SEE = "see engine/config/schema.py"
MAX_COMBINATIONS = 64  # past this many jobs, a multirun sweep's values are checked once each, not combined


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """A dataclass's fields and their resolved types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_open_dict(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or tp is dict


def _leaf_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, tp in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            out += _leaf_keys(cast(type, tp), f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def _field_type(key: str) -> str | None:
    """The declared type of a dotted key, as written in engine/config/schema.py (None for keys below a field)."""
    cls: Any = RunConfig
    *parents, last = key.split(".")
    for part in parents:
        cls = _fields(cast(type, cls)).get(part) if dataclasses.is_dataclass(cls) else None
    if not dataclasses.is_dataclass(cls):
        return None
    declared = {f.name: f.type for f in dataclasses.fields(cls)}.get(last)
    return declared if isinstance(declared, str) else getattr(declared, "__name__", None)


def unknown_key(key: str) -> str | None:
    """None when the dotted key is a field of RunConfig or lies under a dict field; else why not, with the
    closest valid key (or the keys at that level) so the message says what to type instead."""
    cls: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return None  # below a dict or list field: Hydra and the dataclass judge the value
        fields = _fields(cast(type, cls))
        if part in fields:
            cls = fields[part]
            if _is_open_dict(cls):
                return None
            continue
        prefix, rest = ".".join(parts[:i]), ".".join(parts[i + 1:])
        close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
        if close:
            guess = ".".join(p for p in (prefix, close[0]) if p)
            if rest and unknown_key(f"{guess}.{rest}") is None:
                guess = f"{guess}.{rest}"
            hint = f"did you mean {guess}?"
        else:
            leaves = {k: k.rsplit(".", 1)[-1] for k in _leaf_keys() if "." in k}
            near = difflib.get_close_matches(parts[-1], set(leaves.values()), n=3, cutoff=0.75)
            guesses = [k for k, last in leaves.items() if last in near][:3]
            hint = (f"did you mean {' or '.join(guesses)}?" if guesses else
                    f"{prefix} has {', '.join(fields)}" if prefix else f"the top-level keys are {', '.join(fields)}")
        return f"unknown config key {key!r} ({hint}); {SEE}"
    return None


def check_keys(resolved: dict[str, Any]) -> None:
    """Refuse a resolved config holding a key that is no dataclass field (one added with `+`, or from YAML)."""
    def walk(node: dict[str, Any], cls: Any, prefix: str) -> None:
        fields = _fields(cls)
        for name, value in node.items():
            key = f"{prefix}{name}"
            if name not in fields:
                raise UserError(unknown_key(key) or f"unknown config key {key!r}; {SEE}")
            if dataclasses.is_dataclass(fields[name]) and isinstance(value, dict):
                walk(value, fields[name], key + ".")

    walk(resolved, RunConfig, "")


def _one_line(err: BaseException) -> str:
    """The message of a Hydra or OmegaConf error up to its indented details, on one line."""
    lines: list[str] = []
    for line in str(err).splitlines():
        if not line.strip():
            if lines:
                break
            continue
        if line.startswith((" ", "\t")) or line.startswith("Config search path"):
            break
        lines.append(line.strip())
    if not lines:
        return type(err).__name__
    return "; ".join([*(line.rstrip(".") for line in lines[:-1]), lines[-1]])


def _compose_error(err: Exception, lines: list[str]) -> UserError:
    """One line for a failed compose: the override at fault, what is wrong, and what to write instead."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, name = err.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(name, list(err.options), n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return UserError(f"no config {name!r} in group {group or 'config'}{hint}; options: {', '.join(err.options)}")
    cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
    key = str(getattr(cause, "full_key", "") or "").split("[")[0]
    text = next((line for line in reversed(lines) if line.lstrip("+~").split("=", 1)[0] == key), None) or key
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key and not key.startswith("hydra."):
        message = unknown_key(key)
        if message is None:  # a new key of a dict field such as model.kwargs
            return UserError(f"{key} is not in the config yet: add it with +{text.lstrip('+')}")
        return UserError(message)
    if isinstance(cause, ValidationError) and key:
        declared = _field_type(key)
        return UserError(f"{text}: {_one_line(cause)}" + (f" ({key} is {declared})" if declared else ""))
    why = _one_line(cause if str(err).startswith("Error merging override") else err)
    return UserError(f"bad override {text!r}: {why}" if text else f"bad config: {why}")


def _structural(o: Any) -> bool:
    """Whether an override changes how the config is composed (a Hydra setting or a config group choice such as
    model=resnet20), rather than a value of the composed config."""
    group = _fields(RunConfig).get(o.key_or_group)
    return bool(o.is_hydra_override() or o.package is not None or "/" in o.key_or_group
                or dataclasses.is_dataclass(group))


def _spread(lists: list[list[str]]) -> list[list[str]]:
    """Every combination of one line from each list; past MAX_COMBINATIONS, each line once (the others first)."""
    if math.prod(len(c) for c in lists) <= MAX_COMBINATIONS:
        return [list(combo) for combo in itertools.product(*lists)]
    first = [c[0] for c in lists]
    return [first] + [[*first[:i], line, *first[i + 1:]] for i, c in enumerate(lists) for line in c[1:]]


def _sweeps(parsed: list[Any]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Split a multirun's overrides as Hydra's basic sweeper runs them (the last override of a key wins): the
    lines every job shares, the swept lines that change composition, and the swept values."""
    entries: dict[str, tuple[bool, list[str]]] = {}
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            entries[key] = (_structural(o), [o.input_line])
            continue
        entries.pop(key, None)
        if o.is_discrete_sweep():
            with contextlib.suppress(Exception):  # a glob over a group needs Hydra's config loader: left to Hydra
                entries[key] = (_structural(o), [f"{key}={v}" for v in o.sweep_string_iterator()])
    shared = [lines[0] for _, lines in entries.values() if len(lines) == 1]
    structural = [lines for s, lines in entries.values() if s and len(lines) > 1]
    values = [lines for s, lines in entries.values() if not s and len(lines) > 1]
    return shared, structural, values


def _with_values(cfg: Any, lines: list[str], compose_all: Callable[[], Any]) -> Any:
    """A copy of a composed config with these value overrides applied by Hydra's own step for them, which takes
    milliseconds where composing again takes ~0.2 s; compose_all() where that (private) step is not found."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        apply = ConfigLoaderImpl._apply_overrides_to_config
    except (ImportError, AttributeError):
        return compose_all()
    out = copy.deepcopy(cfg)
    apply(OverridesParser.create().parse_overrides(lines), out)
    return out


def check_overrides(overrides: list[str], multirun: bool = False, config_name: str = "config") -> list[RunConfig]:
    """Compose conf/<config_name> with these command-line overrides (with -m, those of each job of the sweep)
    and check the result like a run does; any mistake becomes one UserError line naming the key. Returns the
    jobs' typed configs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from engine.config.files import CONF_DIR

    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed.append(parser.parse_override(line))
        except Exception as err:
            raise UserError(f"cannot read override {line!r}: {_one_line(err)}") from None
    for o in parsed:
        if not o.is_hydra_override() and o.package is None and "/" not in o.key_or_group:
            message = unknown_key(o.key_or_group)
            if message is not None:
                raise UserError(message)
    shared, structural, values = _sweeps(parsed) if multirun else ([cast(str, o.input_line) for o in parsed], [], [])
    jobs: list[RunConfig] = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for choice in _spread(structural):
            base = shared + choice
            try:
                cfg = compose(config_name, overrides=base)
            except Exception as err:
                raise _compose_error(err, base) from None
            for swept in _spread(values):
                again = functools.partial(compose, config_name, overrides=base + swept)
                try:
                    job = _with_values(cfg, swept, again) if swept else cfg
                except Exception as err:
                    raise _compose_error(err, base + swept) from None
                jobs.append(to_run_config(job)[0])
    return jobs


OPEN_DICTS = ("model.kwargs.", "data.kwargs.", "loss.kwargs.")  # free-form arguments of a model, data set, loss


def open_dict_keys(argv: list[str]) -> list[str]:
    """The command line with `model.kwargs.K=V` (data.kwargs, loss.kwargs) as `++model.kwargs.K=V`: a key of these
    free-form dicts is set whether or not the yaml already has it (Hydra alone would ask for a `+`)."""
    return [f"++{a}" if a.startswith(OPEN_DICTS) and "=" in a else a for a in argv]


def check_command_line(argv: list[str]) -> RunConfig | None:
    """Check the overrides of a `landscape`-style command line before hydra.main sees it. Commands that run no
    job (--help, --cfg, --info, ...) or that take their config from elsewhere (-cp, -cd) are left to Hydra; the
    job itself still refuses unknown keys (to_run_config). Returns the config of a single run (not -m): this
    process runs it, so the caller can check its files and devices before Hydra makes its run folder."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args, unknown = get_args_parser().parse_known_args(argv)
    except SystemExit:  # --version, or a malformed flag: Hydra's own parser answers it
        return None
    if unknown:  # Hydra's parser refuses these too, with its usage text
        raise UserError(f"unrecognized argument(s) {' '.join(unknown)!r}: Hydra's flags (-m, --cfg, -cn, ...) go "
                        f"before the overrides")
    if (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.config_path
            or args.config_dir or args.experimental_rerun):
        return None
    multirun = args.multirun or (not args.run and "hydra.mode=MULTIRUN" in args.overrides)
    jobs = check_overrides(open_dict_keys(list(args.overrides)), multirun=multirun,
                           config_name=args.config_name or "config")
    return None if multirun else jobs[0]


def to_run_config(cfg: DictConfig) -> tuple[RunConfig, dict[str, Any]]:
    """Resolve and check a Hydra config: the typed RunConfig (its __post_init__ checks run) and a plain dict;
    a key that is no dataclass field (added with `+`) is refused too."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if isinstance(resolved, dict):
            check_keys(cast("dict[str, Any]", resolved))  # a DictConfig's keys are strings
        run_cfg = OmegaConf.to_object(cfg)
    except UserError:
        raise
    except Exception as err:
        cause = err.__cause__ if isinstance(err.__cause__, UserError) else err
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise UserError(f"bad config: {msg}") from None
    assert isinstance(run_cfg, RunConfig) and isinstance(resolved, dict)
    check_combination(run_cfg)
    return run_cfg, cast("dict[str, Any]", resolved)
