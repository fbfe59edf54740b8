"""HTTP layer: routes (validation, response shapes), schemas and the ASGI guards. Routes call `usecases`."""
