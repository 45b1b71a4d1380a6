"""API Gateway (HTTP API, payload v2) → the FastAPI app. Built once per container, reused warm."""

from mangum import Mangum

from jetmail.api.app import create_app

handler = Mangum(create_app(), lifespan="off")
