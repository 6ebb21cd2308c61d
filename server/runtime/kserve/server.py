"""The gRPC server: grpc.aio on the HTTP server's own event loop, started and stopped with the app.

It serves ``inference.GRPCInferenceService`` (``service.py``) and the standard ``grpc.health.v1``
service, whose ``Check`` answers SERVING while the engine runs and the server is not draining
(for the whole server, ``""``, and for the inference service by name), as ``/health`` does.

The stubs are the ones tritonclient publishes (``tritonclient.grpc.service_pb2*``, generated from
Triton's ``grpc_service.proto``): the same modules Triton's own clients use, so no ``.proto`` is
vendored and nothing is generated at build time.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from starlette.types import ASGIApp
from tritonclient.grpc import service_pb2_grpc

from server.endpoints.state import ServerState
from server.runtime.kserve.service import InferenceService

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
# Room for a long prompt: gRPC's default is 4 MiB each way, the HTTP body limit's default too.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _Health(HealthServicer):  # type: ignore[misc]
    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No such service: {request.service}")
        serving = self.state.engine.is_alive and not self.state.gateway.admission.draining
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


async def start_grpc(app: ASGIApp, state: ServerState, host: str, port: int) -> grpc.aio.Server:
    """Listen on ``host:port``; raises ``OSError`` when the port cannot be bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(app, state), server)
    health = _Health(state)
    await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)  # Watch's view; Check looks afresh
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
    await server.start()
    log.info("Serving gRPC (KServe v2 / Triton's GRPCInferenceService) at %s", address)
    return server
