import pytest

pytestmark = pytest.mark.e2e


def test_explore(page, seeded_catalog, mailoutbox):
    for url in [
        "/pricing/",
        "/accounts/signup/",
        "/accounts/login/",
        "/accounts/confirm-email/garbage/",
        "/accounts/password/reset/",
        "/admin/login/",
    ]:
        page.goto(url)
        open("/tmp/e2e_explore/" + url.strip("/").replace("/", "_") + ".html", "w").write(page.content())
    page.goto("/accounts/signup/")
    page.fill("[name=email]", "a@example.com")
    page.fill("[name=password1]", "password")
    page.fill("[name=password2]", "password")
    page.locator("form [type=submit]").last.click()
    page.wait_for_load_state()
    open("/tmp/e2e_explore/signup_weak.html", "w").write(page.content())
