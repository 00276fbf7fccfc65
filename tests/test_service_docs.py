"""The service's documentation pages: /docs and /redoc load every script, style and icon from the service itself (so
they work on a network without internet access), each of those files is served, and the API key never guards them."""
from html.parser import HTMLParser

import pytest

from carelens.inference.service.dependencies import API_KEY_HEADER
from conftest import SERVICE_KEY

SWAGGER = "/docs-assets/swagger-ui"
#: What each page loads: (tag, attribute, URL) in page order.
LOADED = {
    "/docs": [("link", "href", f"{SWAGGER}/swagger-ui.css"), ("link", "href", f"{SWAGGER}/favicon-32x32.png"),
              ("script", "src", f"{SWAGGER}/swagger-ui-bundle.js")],
    "/redoc": [("link", "href", f"{SWAGGER}/favicon-32x32.png"),
               ("script", "src", "/docs-assets/redoc/redoc.standalone.js")],
}
#: How each page points its viewer at the schema.
SCHEMA = {"/docs": "url: '/openapi.json'", "/redoc": '<redoc spec-url="/openapi.json"></redoc>'}
#: (content type, fewest bytes) of each file: the real bundles, not an error page or an empty file.
SERVED = {".js": ("text/javascript", 500_000), ".css": ("text/css", 100_000), ".png": ("image/png", 500)}


class Loads(HTMLParser):
    """The URLs a page makes the browser load: (tag, attribute, URL) of each <script src> and <link href>."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        attribute = {"script": "src", "link": "href"}.get(tag)
        self.found += [(tag, name, value) for name, value in attrs if name == attribute]


def loaded_by(html: str) -> list[tuple[str, str, str]]:
    parser = Loads()
    parser.feed(html)
    return parser.found


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_a_documentation_page_loads_its_files_from_the_service_and_nothing_from_elsewhere(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"] == "text/html; charset=utf-8"
    assert loaded_by(response.text) == LOADED[page]
    # No CDN, no web fonts: not one URL on the page names another host.
    assert "http://" not in response.text and "https://" not in response.text and "//cdn" not in response.text
    assert SCHEMA[page] in response.text


@pytest.mark.parametrize("url", sorted({url for loads in LOADED.values() for _, _, url in loads}))
def test_each_file_a_page_loads_is_served_whole_with_its_type(client, url):
    content_type, fewest_bytes = SERVED[url[url.rindex("."):]]
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == content_type
    assert len(response.content) >= fewest_bytes
    assert int(response.headers["content-length"]) == len(response.content)


def test_the_swagger_ui_served_reads_the_openapi_version_the_service_writes(client):
    # Swagger UI before 5 shows "Unable to render this definition" for an OpenAPI 3.1 schema, as FastAPI writes; its
    # 3.1 support is the isOAS31 selector.
    assert client.get("/openapi.json").json()["openapi"] == "3.1.0"
    assert b"isOAS31" in client.get(f"{SWAGGER}/swagger-ui-bundle.js").content


def test_the_openapi_schema_documents_the_api_and_not_the_documentation(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert list(response.json()["paths"]) == ["/v1/health", "/v1/models", "/v1/score", "/v1/flag"]


def test_swagger_ui_is_sent_back_to_the_services_own_oauth2_redirect_page(client):
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in client.get("/docs").text
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "<title>Swagger UI: OAuth2 Redirect</title>" in response.text


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_head_on_a_documentation_page_is_answered_like_get_without_a_body(client, path):
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", f"{SWAGGER}/swagger-ui-bundle.js",
                                  f"{SWAGGER}/swagger-ui.css", "/docs-assets/redoc/redoc.standalone.js"])
def test_the_documentation_needs_no_api_key_while_the_models_do(guarded_client, path):
    assert guarded_client.get(path).status_code == 200
    assert guarded_client.get("/v1/models").status_code == 401
    assert guarded_client.get("/v1/models", headers={API_KEY_HEADER: SERVICE_KEY}).status_code == 200


def test_a_file_the_bundles_lack_is_a_404(client):
    assert client.get(f"{SWAGGER}/no-such-file.js").status_code == 404


def test_the_front_page_sends_a_browser_to_the_docs_without_a_validator_badge(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/docs"
    assert "validatorUrl" in client.get("/docs").text and '"validatorUrl": null' in client.get("/docs").text
