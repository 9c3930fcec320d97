"""Datasets by name or path (`data.dataset`), read with the `datasets` library, an optional extra
(`pip install 'tinyrlhf[datasets]'`):

  a Hugging Face hub name      trl-lib/ultrafeedback_binarized, Anthropic/hh-rlhf (load_dataset; data.subset
                               is its config name)
  a save_to_disk directory     Dataset(Dict).save_to_disk(DIR) (load_from_disk)
  a directory of data files    parquet, json, jsonl, csv, arrow files, split by their names
                               (train-*.parquet, test.jsonl, ...) as load_dataset(DIR) does

`open_dataset` picks one split (data.split; else "train", else the only one; `tinyrlhf eval --dataset`:
--split, else "test", else the only one) and returns its rows as a
`DatasetRows`; formats.py reads those exactly as it reads a file's rows (format detection, data.columns,
validation), and an error names the dataset, its split and the row, 0-based as in `dataset[row]`.

A hub dataset is downloaded once into the datasets cache (HF_DATASETS_CACHE, default
~/.cache/huggingface/datasets; every split of it) and read from there afterwards, offline too. Offline
(HF_DATASETS_OFFLINE=1 or HF_HUB_OFFLINE=1, or the hub cannot be reached) a name that is not in the cache is
one error line at once: the hub is probed with one connection first, so the library's retries (~25 s of
backoff with no network) never start.
"""
from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from typing import Any, Iterator

from ..errors import DataError

EXTRA = "pip install 'tinyrlhf[datasets]'"
PROBE_SECONDS = 3.0
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class DatasetRows:
    """One split of a dataset, as rows for formats.py: (0-based index, row) with None cells left out (a
    column that a row does not have, as in a CSV's empty cells). `label` names it in error messages."""

    def __init__(self, dataset, label: str):
        self.dataset = dataset.with_format(None)  # python objects, whatever format it was saved with
        self.label = label

    def __len__(self) -> int:
        return len(self.dataset)

    def __bool__(self) -> bool:  # given, even when empty (the loaders then say it holds no records)
        return True

    def __str__(self) -> str:
        return self.label

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        index = 0
        for batch in self.dataset.iter(batch_size=1024):  # (column -> values): much faster than row access
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                yield index, {c: v for c, v in zip(columns, values) if v is not None}
                index += 1


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what} needs the datasets library, an optional extra: {EXTRA}") from None
    return datasets


def looks_local(name: str) -> bool:
    """Whether `name` is meant as a local path (it exists, or is written like one) rather than a hub name."""
    return os.path.exists(name) or name.startswith(("/", ".", "~")) or name.count("/") > 1


def _is_saved(path: str) -> bool:
    """A directory written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """One TCP connection to the hub endpoint (datasets.config.HF_ENDPOINT). Behind a proxy (HTTPS_PROXY, ...)
    the library knows better: True."""
    import datasets.config as C
    if any(os.environ.get(v) for v in PROXY_VARS):
        return True
    url = urllib.parse.urlsplit(C.HF_ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline(on: bool):
    """datasets' offline mode for one call (it reads datasets.config.HF_HUB_OFFLINE at call time): a cached
    dataset is read from the cache and an uncached one fails at once, with no retries."""
    import datasets.config as C
    old = C.HF_HUB_OFFLINE, C.HF_DATASETS_OFFLINE
    C.HF_HUB_OFFLINE = C.HF_DATASETS_OFFLINE = old[0] or on
    try:
        yield
    finally:
        C.HF_HUB_OFFLINE, C.HF_DATASETS_OFFLINE = old


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _load_hub(ds, name: str, subset: str, what: str):
    import datasets.config as C
    offline = bool(C.HF_HUB_OFFLINE) or not hub_reachable()
    head = f"{what} '{name}'" + (f" (subset {subset})" if subset else "")
    why = "offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if C.HF_HUB_OFFLINE else \
        f"the Hugging Face hub ({C.HF_ENDPOINT}) could not be reached"
    not_cached = DataError(f"{head}: not a local directory, {why}, and it is not in the datasets cache "
                           f"({C.HF_DATASETS_CACHE}); run once with internet to cache it, or give a local directory "
                           "(save_to_disk, or parquet/json files)")
    try:
        with _offline(offline):
            return ds.load_dataset(name, subset or None)
    except ConnectionError:
        raise not_cached from None
    except FileNotFoundError as e:  # DatasetNotFoundError is one; offline, the cache has no copy
        if offline:
            raise not_cached from None
        raise DataError(f"{head}: no such local directory, and not a dataset on the Hugging Face hub, or a "
                        f"private or gated one (log in with `hf auth login`): {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - anything else the library raises becomes one line
        raise DataError(f"{head}: could not be loaded ({type(e).__name__}: {_one_line(e)})") from None


def _load_local(ds, path: str, subset: str, what: str):
    if os.path.isfile(path):
        raise DataError(f"{what} '{path}' is a file; a dataset is a hub name or a directory (a file goes in "
                        "data.train_file, or eval's --prompts)")
    if not os.path.isdir(path):
        raise DataError(f"{what} '{path}': no such directory (a hub name is org/name, e.g. "
                        "trl-lib/ultrafeedback_binarized)")
    if _is_saved(path):
        if subset:
            raise DataError(f"{what} '{path}' was written by save_to_disk and has no subsets (configurations); "
                            f"leave the subset unset (it was '{subset}')")
        try:
            return ds.load_from_disk(path)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{what} '{path}': cannot read it ({type(e).__name__}: {_one_line(e)})") from None
    try:
        with _offline(True):  # local files: never the network
            return ds.load_dataset(path, subset or None)
    except Exception as e:  # noqa: BLE001 - no data files, unreadable files, an unknown subset: one line
        raise DataError(f"{what} '{path}': cannot read it as a dataset (a save_to_disk directory, or parquet, "
                        f"json, jsonl, csv or arrow files) ({type(e).__name__}: {_one_line(e)})") from None


def open_dataset(name: str, split: str = "", subset: str = "", what: str = "data.dataset",
                 default_split: str = "train", split_key: str = "data.split") -> DatasetRows:
    """The rows of one split of dataset `name` (a hub name or a local directory, module docstring); `split`
    "" takes `default_split`, or the only split there is. `what` and `split_key` name the settings in errors."""
    ds = _datasets(what)
    if not name.strip():
        raise DataError(f"{what} is empty")
    name = os.path.expanduser(name)
    loaded: Any = _load_local(ds, name, subset, what) if looks_local(name) else _load_hub(ds, name, subset, what)
    head = f"{what} '{name}'" + (f" (subset {subset})" if subset else "")
    if isinstance(loaded, ds.DatasetDict):
        splits = list(loaded)
        if not split:
            if default_split not in loaded and len(splits) != 1:
                raise DataError(f"{head} has the splits {', '.join(splits)} and none is '{default_split}'; pick "
                                f"one with {split_key}")
            split = default_split if default_split in loaded else splits[0]
        elif split not in loaded:
            raise DataError(f"{head} has no split '{split}' ({split_key}); its splits: {', '.join(splits)}")
        loaded = loaded[split]
    elif split and split != str(loaded.split or ""):
        raise DataError(f"{head} is a single dataset without splits (saved from a Dataset, not a DatasetDict); "
                        f"leave {split_key} unset (it was '{split}')")
    else:
        split = str(loaded.split or "")  # a saved Dataset knows its split when it was one
    return DatasetRows(loaded, f"dataset {name}" + (f" (subset {subset})" if subset else "") +
                       (f", split {split}" if split else ""))
