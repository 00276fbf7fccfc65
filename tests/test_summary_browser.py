"""summary.html of a real nightly run in a real headless Chromium: its script runs without errors, every section is
there, the flagged list sorts and filters, and the page asks the network for nothing."""
import shutil
from importlib.util import find_spec

import pandas as pd
import pytest

from carelens.inference.nightly import summary as summary_module
from carelens.inference.nightly.layout import FLAGGED_PARQUET, SUMMARY
from carelens.inference.nightly.run import run_nightly

CHROMIUM = shutil.which("chromium")

# Marks, not skips in a fixture: those would come only after the session's registry was trained.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium on the PATH as `chromium` (apt-get install chromium)"),
    pytest.mark.skipif(find_spec("playwright") is None, reason="needs playwright (pip install 'carelens[test]')"),
]

#: What a self-contained page may load: itself and the figures inlined in it.
LOCAL = ("file:", "data:")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (apt-get install chromium) driven by Playwright, whose own browser downloads are not used."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def tonight(registry_with_models, tmp_path_factory):
    """A nightly run over the test day: its folder and the section headings the summary stage put on its page."""
    out = tmp_path_factory.mktemp("browser") / "run"
    headings, page_of = [], summary_module.html_report

    def recorded(title, sections):
        sections = list(sections)
        headings.extend(heading for heading, _ in sections)
        return page_of(title, sections)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summary_module, "html_report", recorded)
        run_nightly([registry_with_models.day_dir / "transcripts.jsonl"],
                    [registry_with_models.day_dir / "interactions.parquet"], out, registry_with_models.root,
                    show_progress_bar=False)
    return out, headings


@pytest.fixture
def opened(browser, tonight):
    """summary.html open in a fresh page once its script has run; on the way out, no script error and no request
    beyond the file itself and its inline images (any other is refused)."""
    errors, requested = [], []
    page = browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("request", lambda request: requested.append(request.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(LOCAL) else route.abort())
    page.goto((tonight[0] / SUMMARY).as_uri())
    page.wait_for_selector('body[data-ready="1"]', timeout=5000)
    yield page
    page.close()
    assert [url for url in requested if not url.startswith(LOCAL)] == []
    assert errors == []


def flagged_list(tonight) -> pd.DataFrame:
    return pd.read_parquet(tonight[0] / FLAGGED_PARQUET)


def column(table, name: str) -> list[str]:
    """The text of one column's cells, top to bottom, as shown."""
    index = table.locator("thead th").all_text_contents().index(name) + 1
    return table.locator(f"tbody tr td:nth-child({index})").all_text_contents()


def test_every_section_is_on_the_page_and_in_its_contents(opened, tonight):
    headings = tonight[1]
    assert "Flagged customers" in headings
    assert opened.locator("section > h2").all_text_contents() == headings
    assert opened.locator("nav a").all_text_contents() == headings
    for link in opened.locator("nav a").all():
        assert opened.locator(f"section{link.get_attribute('href')} > h2").count() == 1


def test_a_click_on_churn_risk_sorts_the_flagged_list_down_then_up(opened, tonight):
    flagged = flagged_list(tonight)
    assert len(flagged) > 1
    table, by_churn = opened.locator("#flagged-customers table"), sorted(flagged["churn_risk"], reverse=True)
    assert column(table, "customer") == flagged["customer_id"].tolist()
    header = table.locator("thead th", has_text="churn risk")
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert column(table, "churn risk") == [f"{risk:.4f}" for risk in by_churn]
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert column(table, "churn risk") == [f"{risk:.4f}" for risk in by_churn[::-1]]


def test_a_customer_id_in_the_filter_leaves_that_customer_alone(opened, tonight):
    flagged = flagged_list(tonight)
    rows = opened.locator("#flagged-customers tbody tr")
    texts = rows.evaluate_all("rows => rows.map(row => Array.from(row.cells, cell => cell.textContent).join('\\n'))")
    alone = next(c for c in flagged["customer_id"] if sum(c.lower() in text.lower() for text in texts) == 1)
    opened.locator("#flagged-customers input[data-filter]").fill(alone.upper())
    shown = opened.locator("#flagged-customers tbody tr:visible")
    assert shown.count() == 1 and shown.locator("td").first.text_content() == alone
    assert opened.locator("#flagged-customers [data-count]").text_content() == f"1 of {len(flagged):,} shown"
