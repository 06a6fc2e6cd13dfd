"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, from the
protocol's published protos as tritonclient ships them), on its own port, in the server's
process and event loop.

A gRPC call is treated as the HTTP request it stands for: the same data plane (model
registry, per-model batch queues and admission, deadlines, readiness), the same bearer token
(``authorization`` metadata), the same metrics and access log line. An ``ApiError`` becomes the
status code that means the same thing (``STATUS``); bad input is never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ln2d.serve import grpc_codec
from ln2d.serve.dataplane import DataPlane
from ln2d.serve.errors import ApiError
from ln2d.serve.middleware import access_log, request_id
from ln2d.serve.v2_codec import DATATYPE

log = logging.getLogger("ln2d.serve")
SERVICE = "/inference.GRPCInferenceService/"
Code = grpc.StatusCode
STATUS = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    413: Code.RESOURCE_EXHAUSTED,
    415: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
OPEN = {"ServerLive", "ServerReady"}  # like /v2/health/*: no token
SERVER_ERRORS = {Code.INTERNAL, Code.UNKNOWN, Code.DATA_LOSS}


def status_of(error: ApiError) -> grpc.StatusCode:
    """A full queue is RESOURCE_EXHAUSTED (retry later); any other 503 is UNAVAILABLE."""
    if error.reason == "queue_full":
        return Code.RESOURCE_EXHAUSTED
    return STATUS.get(error.status, Code.INTERNAL)


@dataclass
class Call:
    """What one call's log line, metrics and trace carry."""

    model: str = ""
    version: str = ""
    span: object = None  # the call's trace span, when tracing


Handler = Callable[[object, grpc.aio.ServicerContext, Call], Awaitable[object]]


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: DataPlane) -> None:
        self.state, self.registry, self.settings = state, state.registry, state.settings
        token = self.settings.token
        self._expected = f"Bearer {token.get_secret_value()}".encode() if token else None
        handlers: dict[str, Handler] = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ServerMetadata": self._server_metadata,
            "ModelReady": self._model_ready,
            "ModelMetadata": self._model_metadata,
            "ModelInfer": self._model_infer,
            "RepositoryIndex": self._repository_index,
            "RepositoryModelLoad": self._repository_load,
            "RepositoryModelUnload": self._repository_unload,
        }
        for name, handler in handlers.items():
            setattr(self, name, self._method(name, handler))

    def _method(self, name: str, handler: Handler):
        """``handler`` with the token check, the status mapping, metrics and the log line."""
        path = SERVICE + name
        metrics, tracer = self.state.metrics, self.state.tracer

        async def method(request, context: grpc.aio.ServicerContext):
            started, call, code = time.perf_counter(), Call(), Code.OK
            metadata = dict(context.invocation_metadata() or ())
            if tracer is not None:
                call.span = tracer.request(
                    path, metadata, {"rpc.system": "grpc", "rpc.method": name}
                )
            metrics.in_flight.inc()
            try:
                if name not in OPEN:
                    self._authenticate(metadata)
                return await handler(request, context, call)
            except ApiError as refused:
                code = status_of(refused)
                retry = (("retry-after", "1"),) if "Retry-After" in refused.headers else ()
                await context.abort(code, refused.message, retry)
            except Exception:
                log.exception("unhandled error in %s", path)
                code = Code.INTERNAL
                await context.abort(code, "internal server error")
            finally:
                metrics.in_flight.dec()
                elapsed = time.perf_counter() - started
                metrics.count_request(path, code.name, call.model, call.version)
                metrics.observe("total", elapsed, call.model, call.version)
                if call.span is not None:
                    if call.model:
                        call.span.set_attribute("ln2d.model", call.model)
                        call.span.set_attribute("ln2d.version", call.version)
                    call.span.set_attribute("rpc.grpc.status_code", code.value[0])
                    tracer.finish(call.span, code.name, ok=code not in SERVER_ERRORS)
                if self.settings.access_log:
                    self._log(path, metadata, context, code, elapsed, call)

        return method

    def _authenticate(self, metadata: dict) -> None:
        if self._expected is None:
            return
        sent = str(metadata.get("authorization", "")).encode()
        if not hmac.compare_digest(sent, self._expected):
            raise ApiError(401, "missing or wrong bearer token (authorization metadata)")

    def _log(self, path, metadata, context, code, elapsed, call) -> None:
        sent = metadata.get("x-request-id")
        entry = {
            "request_id": request_id(sent.encode() if sent else None).decode(),
            "method": "gRPC",
            "path": path,
            "status": code.name,
            "model": call.model,
            "version": call.version,
            "ms": round(elapsed * 1000, 3),
            "client": context.peer(),
        }
        if call.span is not None:
            entry["trace_id"] = self.state.tracer.trace_id(call.span)
        access_log.info(json.dumps(entry))

    # ---- the calls ---------------------------------------------------------------------

    async def _server_live(self, request, context, call):
        return service_pb2.ServerLiveResponse(live=True)

    async def _server_ready(self, request, context, call):
        return service_pb2.ServerReadyResponse(ready=self.state.ready)

    async def _server_metadata(self, request, context, call):
        return service_pb2.ServerMetadataResponse(
            name="ln2d",
            version=package_version("ln2d"),
            extensions=["classification", "model_repository"],
        )

    async def _model_ready(self, request, context, call):
        """Triton answers ``ready: false`` for a model or version it does not know, not an
        error: tritonclient's ``is_model_ready`` then returns False."""
        try:
            reason = self.registry.not_ready_reason(request.name, request.version or None)
        except ApiError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=reason is None and self.state.ready)

    async def _model_metadata(self, request, context, call):
        served = self.registry.resolve(request.name, request.version or None)
        info, tensor = served.info, service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=info.name,
            versions=self.registry.versions(served.name),
            platform="onnxruntime_onnx",
            inputs=[
                tensor(name=info.input_name, datatype=DATATYPE, shape=[-1, *info.sample_shape])
            ],
            outputs=[
                tensor(name=info.output_name, datatype=DATATYPE, shape=[-1, info.num_classes])
            ],
        )

    async def _model_infer(self, request, context, call):
        arrived, timeout = time.monotonic(), self.settings.timeout_s
        served = self.registry.resolve(request.model_name, request.model_version or None)
        call.model, call.version = served.name, str(served.version)
        self.state.check_ready()
        remaining = context.time_remaining()  # the client's gRPC deadline, if it set one
        deadline = arrived + (timeout if remaining is None else min(remaining, timeout))
        with served:
            parsed = grpc_codec.parse_request(request, served.info, self.settings.max_images)
            with served.batcher.admit(len(parsed.samples)) as admission:
                results = await self.state.infer(
                    served, admission, parsed.samples, deadline, call.span
                )
        encoding = time.monotonic()
        logits = np.stack([result.logits for result in results])
        answer = grpc_codec.build_response(parsed, logits, served.info, served.version)
        self.state.encoded(call.span, encoding)
        return answer

    async def _repository_index(self, request, context, call):
        entries = self.registry.index(ready_only=request.ready)
        index = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(
            models=[
                index(
                    name=e["name"],
                    version=e.get("version", ""),
                    state=e["state"],
                    reason=e["reason"],
                )
                for e in entries
            ]
        )

    async def _repository_load(self, request, context, call):
        await self.state.load_model(request.model_name, dict(request.parameters))
        return service_pb2.RepositoryModelLoadResponse()

    async def _repository_unload(self, request, context, call):
        await self.state.unload_model(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


async def start(state: DataPlane) -> grpc.aio.Server:
    """Bind and start the gRPC server; messages are bounded like HTTP bodies."""
    settings = state.settings
    limit = settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC running on %s:%d", settings.host, port)
    return server
