"""Loading the dataclass configs of base.py, offline.py and online.py: YAML files, dotted CLI overrides, type checks,
and the commented YAML of `tinyrlhf <stage> --print-config`.

An error names where the bad value came from: the override that set it (`override 'train.lrr=1': ...`),
else the YAML file and line (`sft.yaml:7: config key 'train.lr': must be > 0, got -1.0`).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import os
import textwrap
import types
import typing
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from .situations import situation


class FieldError(ConfigError):
    """A bad value of one config key; `key` is its dotted name (qualified as the error leaves each section)."""

    def __init__(self, key: str, detail: str):
        super().__init__(f"config key '{key}': {detail}", key=key)
        self.detail = detail

    def under(self, prefix: str) -> "FieldError":
        return FieldError(prefix + self.key, self.detail) if prefix else self


def check_range(cfg, name: str, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False):
    """Raise FieldError unless lo <(=) cfg.name <(=) hi; used by every config's __post_init__."""
    v = getattr(cfg, name)
    ok = (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
    if ok:
        return
    if hi is None:
        want = f"{'>' if lo_open else '>='} {lo:g}"
    elif lo is None:
        want = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    raise FieldError(name, f"must be {want}, got {v!r}")


# ---------------------------------------------------------------- types

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp, key: str):
    """Check/convert one YAML value to the annotated (non-dataclass) type, or raise FieldError naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise FieldError(key, f"{value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "":  # `beta=` on the command line: back to the default it stands for
            return None
        return coerce(value, [a for a in typing.get_args(tp) if a is not type(None)][0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise FieldError(key, f"expected {len(args)} values, got {list(value)!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FieldError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FieldError(key, f"expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise FieldError(key, f"expected a number, got {value!r}")
        if not math.isfinite(number):  # no key means anything by inf or NaN (0 = off where "off" exists)
            raise FieldError(key, f"expected a finite number, got {value!r}")
        return number
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise FieldError(key, f"expected a string, got {value!r}")
    raise FieldError(key, f"unsupported type {_type_name(tp)}")


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _section_default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def build(cls, values: dict | None, prefix: str = "", base=None):
    """`cls` from a (nested) dict. A nested section starts from its parent's default for it (`base`), so a
    stage's own defaults (e.g. SFT's train.lr) survive a file or override that sets other keys of it."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise FieldError(prefix.rstrip("."), f"expected a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in values:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}; valid keys here: "
                              + ", ".join(prefix + n for n in fields), key=f"{prefix}{k}")
    kwargs = {}
    for k, v in values.items():
        tp = _hints(cls)[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = build(tp, v, f"{prefix}{k}.", _section_default(fields[k]))
        else:
            kwargs[k] = coerce(v, tp, prefix + k)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except FieldError as e:
        raise e.under(prefix) from None


# ---------------------------------------------------------------- YAML and overrides

def _set_dotted(tree: dict, dotted: str, value: Any):
    parts = dotted.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{'.'.join(parts[:i + 1])}' is not a section", key=dotted)
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`key.sub=value` strings -> (key, YAML-parsed value) pairs."""
    out = []
    for item in overrides:
        key, _, raw = item.partition("=")
        if not _ or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def read_yaml(path: str) -> tuple[dict, dict[str, int]]:
    """(tree, line of each dotted key) of a YAML config file; duplicate keys are an error naming both lines."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        tree = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if tree is None:
        return {}, {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    lines: dict[str, int] = {}

    def walk(node, prefix):
        # PyYAML keeps the last of two equal keys without a word; a config that says lr twice is a mistake
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if dotted in lines:
                raise ConfigError(f"{path}:{line}: duplicate key '{dotted}' (first at line {lines[dotted]})")
            lines[dotted] = line
            walk(value_node, dotted + ".")
    walk(root, "")
    return tree, lines


def _blame(key: str, overrides: list[tuple[str, str]], lines: dict[str, int], path: str | None) -> str:
    """Where the value of `key` came from: the last override that set it (or its section), else the file line."""
    related = lambda a, b: a == b or a.startswith(b + ".") or b.startswith(a + ".")  # noqa: E731
    for item, okey in reversed(overrides):
        if related(key, okey):
            return f"override '{item}'"
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in lines:
            return f"{path}:{lines['.'.join(parts[:n])]}"
    return path or ""


def _field_type(cls, dotted: str):
    """The annotated type of a dotted key of `cls`, or None if there is no such key."""
    tp = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp) or part not in _hints(tp):
            return None
        tp = _hints(tp)[part]
    return tp


def load_config(cls, path: str | None = None, overrides: list[str] | None = None):
    """Build `cls` from a YAML file (optional) and dotted overrides, validating every key, type and range."""
    tree, lines = read_yaml(path) if path else ({}, {})
    given = list(overrides or [])
    parsed = parse_overrides(given)
    origins = [(item, key) for item, (key, _) in zip(given, parsed)]
    try:
        in_file = set((tree.get("train") or {}) if isinstance(tree.get("train"), dict) else ())
        for item, (key, value) in zip(given, parsed):
            if _field_type(cls, key) is str:  # a string key takes the text as typed: out_dir=a:b, stop_token=yes
                value = item.partition("=")[2]
            _set_dotted(tree, key, value)
        _epochs_or_steps(cls, tree, in_file, {key for key, _ in parsed})
        for key, value in situation(cls, tree).items():  # LoRA or not, preset or pretrained, task or own data
            _set_dotted(tree, key, value)
        return build(cls, tree)
    except ConfigError as e:
        where = _blame(e.key, origins, lines, path) if e.key else (path or "")
        raise ConfigError(f"{where}: {e}" if where else str(e), key=e.key) from None


def _epochs_or_steps(cls, tree: dict, in_file: set, overridden: set):
    """`train.epochs` alone counts the run in passes over the data (max_steps 0): set in the file without
    max_steps there, or by an override without a max_steps override (it then wins over the file's steps).
    Both as overrides is one error: only one of them can say how long the run is. (A file that sets both,
    like --print-config's, keeps its meaning: max_steps > 0 wins.)"""
    train = tree.get("train")
    if _field_type(cls, "train.epochs") is None or not isinstance(train, dict) or "epochs" not in train:
        return
    if "train.epochs" in overridden:
        if "train.max_steps" not in overridden:
            train["max_steps"] = 0
        elif train["max_steps"] not in (0, None):
            raise ConfigError(f"train.epochs={train['epochs']} and train.max_steps={train['max_steps']}: give one of "
                              "the two (epochs counts passes over the data, max_steps optimizer steps)",
                              key="train.epochs")
    elif "epochs" in in_file and "max_steps" not in in_file and "train.max_steps" not in overridden:
        train["max_steps"] = 0


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists), for YAML/JSON dumps."""
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def replace(cfg, **dotted):
    """Copy of a frozen config with dotted keys changed: replace(cfg, **{"train.lr": 1e-4})."""
    tree = config_to_dict(cfg)
    for k, v in dotted.items():
        _set_dotted(tree, k, v)
    return build(type(cfg), tree)


# ---------------------------------------------------------------- --print-config

@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (and of its dataclass bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                    and isinstance(after.value.value, str):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def render_yaml(cfg, indent: str = "") -> str:
    """The config as YAML, every key preceded by its docstring as `#` comments; load_config reads it back."""
    out = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        for line in docs.get(f.name, "").splitlines():
            out.append(f"{indent}# {line}".rstrip())
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.append(f"{indent}{f.name}:")
            out.append(render_yaml(value, indent + "  "))
        else:
            plain = list(value) if isinstance(value, tuple) else value
            text = yaml.safe_dump({f.name: plain}, default_flow_style=True, sort_keys=False, width=10**6)
            out.append(indent + text.strip()[1:-1])  # "{key: value}" -> "key: value"
    return "\n".join(out)
