"""avtta: a data-pipeline-first toolkit for audio-visual test-time adaptation.

The sub-packages live in the top-level folders of the repository:
``avtta.pipelines`` (pipelines/), ``avtta.shards`` (shards/), ``avtta.manifests`` (manifests/),
``avtta.corruptions`` (corruptions/), ``avtta.models`` (models/), ``avtta.adapt`` (adapt/).
"""

__version__ = "0.1.0"
