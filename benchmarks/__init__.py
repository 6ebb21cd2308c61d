"""Latency and throughput benchmarks for any OpenAI-compatible endpoint, and ise against its peers."""
