"""The Ingress deployment: the OpenAI HTTP face, a FastAPI app per replica.

`create_app` assembles it: the error handlers (http/errors.py), the middleware in its order
(http/middleware.py) and the routers (routes/); the gateway (gateway/) and the model
directory, which `Ingress` builds over Ray Serve with wiring.py, start and stop with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from fastapi import FastAPI
from ray import serve

from contract.config import (
    INGRESS_DEPLOYMENT_NAME,
    MODEL_CALL_MESSAGE_BYTES,
    model_call_env_vars,
)
from contract.ingress_args import IngressArgs
from hardware.probe import ensure_supervisor
from observability.exposition import ClusterScraper
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.http.errors import install_error_handlers
from serve_app.ingress.http.middleware import build_middleware
from serve_app.ingress.http.openapi import install_openapi
from serve_app.ingress.routes.admin import admin_router
from serve_app.ingress.routes.models import models_router
from serve_app.ingress.routes.operations import operations_router
from serve_app.ingress.routes.teams import teams_router
from serve_app.ingress.routes.v1 import openai_router
from serve_app.ingress.serve_models import (
    connect_serve_model,
    deployed_model_args,
    list_serve_model_apps,
    list_serve_replicas,
)
from serve_app.ingress.wiring import build_gateway
from serve_app.state.actor import get_or_create_actor
from serve_app.state.client import StateClient
from serve_app.state.core import StateSettings


def create_app(gateway: Gateway, args: IngressArgs, scraper: ClusterScraper | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        gateway.directory.start()
        gateway.start()
        try:
            yield
        finally:
            await gateway.stop()
            await gateway.directory.stop()
            if scraper is not None:
                await scraper.close()

    app = FastAPI(title="hfserve", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    install_error_handlers(app)
    install_openapi(app, args)
    build_middleware(app, args, authenticator=gateway.authenticator, quota=gateway.quota, metrics=gateway.metrics,
                     on_finish=gateway.usage.record_request)
    app.include_router(openai_router(gateway))
    app.include_router(operations_router(gateway, started=time.time(),
                                         metrics=scraper.exposition if scraper is not None else None))
    app.include_router(admin_router(gateway))
    app.include_router(teams_router(gateway))
    app.include_router(models_router(gateway))
    return app


logger = logging.getLogger("ray.serve")


def model_calls_fit_grpc() -> bool:
    """Whether this process's gRPC channels take the largest documented model reply. A config
    whose `ray_actor_options` replaced ours (and with them the env_vars) falls back to actor
    calls, which have no such limit, rather than failing the largest requests."""
    from ray.serve._private.constants import RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH as in_force

    if in_force >= MODEL_CALL_MESSAGE_BYTES:
        return True
    logger.warning("gRPC messages are limited to %d bytes in this ingress (set %s in its runtime_env): model calls "
                   "go as Ray actor calls instead", in_force, next(iter(model_call_env_vars())))
    return False


@serve.deployment(
    name=INGRESS_DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": model_call_env_vars()}},
    max_ongoing_requests=512,
)
@serve.ingress()
class Ingress:
    def __init__(self, args: IngressArgs):
        self.args = args
        state = StateClient.ray_actor(get_or_create_actor(StateSettings.from_args(args)))
        self.hardware = ensure_supervisor()  # the per-node hardware actors: /status and placement
        over_grpc = args.model_calls_over_grpc and model_calls_fit_grpc()
        self.gateway = build_gateway(
            args, state,
            list_apps=list_serve_model_apps,
            connect=functools.partial(connect_serve_model, over_grpc=over_grpc),
            list_replicas=lambda: list_serve_replicas(self.hardware),
            node_reports=lambda: asyncio.wait_for(self.hardware.reports.remote(), 2.0),
            deployed_args=deployed_model_args,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.gateway, self.args, ClusterScraper(refresh_s=self.args.metrics_refresh_s))

