"""Who is calling: API keys (``keys``, stored hashed), JWTs (``tokens``) and the
authenticator that turns a bearer token into a ``Principal`` (``authenticator``);
the generated JWT secret (``secret``)."""
