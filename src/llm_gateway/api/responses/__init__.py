"""The OpenAI Responses API (/v1/responses): create, streamed or not, retrieve, delete."""
