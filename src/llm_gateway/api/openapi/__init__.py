"""The OpenAPI document of the HTTP API (/openapi.json) and its Swagger UI page (/docs).

``operation`` holds the table row each protocol package fills in next to its
routes (``openapi_operations``); ``document`` builds the document from those
tables once, in ``create_app``; ``routes`` serves it and the page.
"""
