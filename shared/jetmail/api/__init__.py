"""The HTTPS API: FastAPI routers over the core package (Lambda via Mangum, or uvicorn locally)."""
