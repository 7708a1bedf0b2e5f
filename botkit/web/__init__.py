"""The aiohttp face: the server (callbacks, ``/healthz``, start and stop), the provider's HTTP
client, and the slow-client guard."""
