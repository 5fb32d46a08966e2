"""Pipelines: decode (PyAV) -> corrupt -> featurize (Kaldi fbank) -> write shards, as plain functions that Ray
schedules (``ray_runner`` is the only Ray code). ``shard_job`` is ``avtta shard``, ``importer`` is ``avtta import``,
``demo_data`` generates the demo's synthetic videos, ``synth`` writes small test media."""
