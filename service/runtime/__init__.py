"""What the server (``service.server``) and the embedding job (``service.embed``) share: the model's settings
(:mod:`service.runtime.settings`), the backend contract and one file per backend (``backend``, ``onnx``,
``torch``), the factory that picks and plans them (``factory``), and the server's dynamic batching (``batcher``)."""
