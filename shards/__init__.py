"""The avtta shard format: schema (declared once), deterministic atomic writer, member index, readers.

This package imports nothing else of avtta: the catalog-level selection (:func:`avtta.manifests.open_dataset`) sits
above it, beside the catalog. Its modules, bottom up:

- :mod:`.schema`: the sample schema and its constants; :mod:`.io`: atomic writes, digests; :mod:`.storage`: every
  path a URL (local, ``file://``, ``s3://``) through one fsspec layer;
- :mod:`.writer`: the shard writer; :mod:`.index`: the byte index of tar members;
- :mod:`.transforms`: the CAV-MAE input transforms (statistics, frame selection, resize + crop, normalisation);
- :mod:`.loader`: what both access modes share (settings, frame decode, key join, loader shell);
- :mod:`.indexed` (index mode: random access, the default) and :mod:`.reader` (stream mode: sequential tars),
  which give the same samples with identical tensors.

Names are imported on first use, so ``avtta.shards.schema`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCHEMA_VERSION": "schema",
    "Sample": "schema",
    "SchemaError": "schema",
    "decode_sample": "schema",
    "encode_sample": "schema",
    "validate_key": "schema",
    "ShardWriter": "writer",
    "FBANK_MEAN": "transforms",
    "FBANK_STD": "transforms",
    "KeyJoin": "loader",
    "ReaderConfig": "loader",
    "join_keys": "loader",
    "IndexedLoader": "indexed",
    "IndexedShards": "indexed",
    "SampleRefs": "indexed",
    "BatchLoader": "reader",
    "ShardStream": "reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
