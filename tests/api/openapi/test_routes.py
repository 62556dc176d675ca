"""/docs: Swagger UI from the installed package, no CDN; the page, its assets and
/openapi.json need no credentials."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from starlette.testclient import TestClient

from llm_gateway.app import create_app
from llm_gateway.settings import Settings


class Refs(HTMLParser):
    """The src and href attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_docs_is_html_whose_assets_are_same_origin_and_served(dummy_settings: Settings) -> None:
    with TestClient(create_app(dummy_settings)) as c:  # no credentials
        page = c.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        parser = Refs()
        parser.feed(page.text)
        assert len(parser.refs) >= 3
        for ref in parser.refs:
            url = urljoin("http://testserver/docs", ref)
            assert urlsplit(url).netloc == "testserver", ref
            got = c.get(urlsplit(url).path)
            assert got.status_code == 200, ref
            assert got.content, ref
        assert "swagger-ui-bundle.js" in page.text


def test_the_pages_script_loads_the_document(dummy_settings: Settings) -> None:
    with TestClient(create_app(dummy_settings)) as c:
        script = c.get("/docs/assets/init.js")
        bundle = c.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and '"openapi.json"' in script.text
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in bundle.content
