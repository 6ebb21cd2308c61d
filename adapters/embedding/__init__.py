"""Embedding models on the CPU: sentence-transformers directories served with dynamic batching."""
