"""The gRPC counterpart of ``loadgen``: ``concurrency`` closed-loop callers of ``ModelInfer``
on one channel (HTTP/2 streams, as tritonclient uses it), for ``seconds``. Answers are
recorded as HTTP-like statuses, so that ``LoadResult`` reads the same for both protocols:
200 for OK, 503 for RESOURCE_EXHAUSTED and UNAVAILABLE, 400 for anything else."""

from __future__ import annotations

import asyncio
import time

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ln2d.serve.tools.loadgen import LoadResult

_RETRY = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}


async def _worker(stub, request, stop_at: float, result: LoadResult) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            await stub.ModelInfer(request)
            status = 200
        except grpc.aio.AioRpcError as error:
            status = 503 if error.code() in _RETRY else 400
        result.latencies.append(time.perf_counter() - started)
        result.starts.append(started)
        result.statuses.append(status)


async def load(
    host: str, port: int, request: service_pb2.ModelInferRequest, concurrency: int, seconds: float
) -> LoadResult:
    result = LoadResult(seconds)
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await channel.channel_ready()
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(_worker(stub, request, stop_at, result) for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def run_grpc_load(
    host: str, port: int, request: service_pb2.ModelInferRequest, concurrency: int, seconds: float
) -> LoadResult:
    """``load`` on its own event loop (uvloop's when installed), as ``loadgen.run_load``."""
    work = load(host, port, request, concurrency, seconds)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)
