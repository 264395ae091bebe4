"""The HTTP API (litestar): controllers, schemas, authentication and the error mapping."""
