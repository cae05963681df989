"""``byol-embed``: a whole dataset into resumable Parquet shards (``job``, with its ``local_engine`` and
``ray_engine``, each running ``pipeline`` on whole shards), a FAISS index over them (``index``), and curation
(``curate``)."""
