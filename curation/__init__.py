"""Curation of an embedding folder with the user's own model: duplicates, outliers, leaks, image quality, wrong
labels, subsets worth labelling and a map. Imports ``storage`` and ``hub`` only; ``service`` (``byol-embed``,
``byol-serve``) imports it, never the reverse: a model a command needs (the calibration's) is passed in.

One module per command: :mod:`~curation.dedup`, :mod:`~curation.outliers`, :mod:`~curation.leaks`,
:mod:`~curation.calibration`, :mod:`~curation.quality` (with :mod:`~curation.image_stats`), :mod:`~curation.labels`,
:mod:`~curation.select`, :mod:`~curation.map`. Shared pieces: :mod:`~curation.neighbours` (kNN, FAISS, PCA,
k-means), :mod:`~curation.results` (the results contract: every file the commands write, declared once, with the
one writer and the one reader), :mod:`~curation.label_sources`, :mod:`~curation.hashes`, :mod:`~curation.progress`.
"""
