"""Running the service: ``tokendealer serve``'s checks, the bound socket, and the ASGI
servers (uvicorn with a guarded httptools protocol, Hypercorn)."""
