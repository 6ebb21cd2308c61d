"""gRPC beside HTTP: KServe's Open Inference Protocol v2 with Triton's LLM conventions (``--grpc-port``)."""
