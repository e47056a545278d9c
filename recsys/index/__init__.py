"""FAISS indexes over a run's item embeddings (``faiss_index``), their evaluation against
exact search (``evaluate``) and semantic-ID candidates (``semantic``).

Reads the run folder only (``recsys.artifacts.RunFolder``), never the training code.
Submodules are imported explicitly so that ``recsys.index.fingerprint`` stays cheap.
"""
