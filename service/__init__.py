"""The two programs that run a model: the HTTP server (:mod:`service.server`, ``byol-serve``) and the embedding
job (:mod:`service.embed`, ``byol-embed``), on the runtime they share (:mod:`service.runtime`). The server on Ray
Serve is :mod:`service.ray_serve` (``service.ray_serve:app``), a Python client of its API :mod:`service.client`."""
