"""``byol-embed``: a whole dataset into resumable Parquet shards (locally or on Ray), and FAISS search over it."""
