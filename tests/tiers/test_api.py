import pytest
from rest_framework.test import APIClient


@pytest.mark.django_db
def test_tiers_api_lists_public_tiers_for_anyone(catalog):
    response = APIClient().get("/api/v1/tiers")
    assert response.status_code == 200
    tiers = {t["slug"]: t for t in response.json()["results"]}
    assert set(tiers) == {"free", "assistant", "plus", "pro"}
    assert tiers["pro"]["price"] == 20000 and tiers["pro"]["overage_policy"] == "bill"
    assert tiers["free"]["models"] == ["Llama-3.3-8B-Instruct"]
    assert tiers["free"]["overage_price_per_million_tokens"] is None


@pytest.mark.django_db
def test_schema_and_offline_swagger_ui(client, catalog):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ["/api/v1/me", "/api/v1/tiers", "/api/v1/keys", "/api/v1/usage"]:
        assert path in text
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "/static/drf_spectacular_sidecar/" in docs
    assert "https://" not in docs.replace("https://swagger.io", "")  # nothing loaded from the internet
