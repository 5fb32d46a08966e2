"""Pipelines: decode (PyAV) -> corrupt -> featurize (Kaldi fbank) -> write shards, as plain functions that Ray
schedules. ``setjob`` is the one "chunks -> parts -> shard set" framework (start / write / complete hooks, failure
rows, resume); ``shard_job`` (``avtta shard``) and ``importer`` (``avtta import``) are its two policies.
``ray_runner`` is the only Ray code (``run_tasks``: tasks on an actor pool, results in order, one progress bar).
``preview`` renders corrupted previews, ``demo_data`` generates the demo's synthetic videos, ``synth`` writes small
test media."""
