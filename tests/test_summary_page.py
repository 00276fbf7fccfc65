"""summary.html as markup: sortable cells carry their exact values, sections their own ids and a table of contents,
data stays text, a quiet night says so, and nothing on the page points at the network."""
import re

import pandas as pd
import pytest

from carelens.data.html import Shown, html_report, section_ids, table_html
from carelens.inference.nightly.summary import NOBODY_FLAGGED, SummaryPage, nightly_summary

HOSTILE_ID = "<script>alert(1)</script>"


def flagged_customers(ids: list[str]) -> pd.DataFrame:
    """Flagged customers as the flags stage writes them, riskiest first."""
    risks = [0.9 - 0.1 * i for i in range(len(ids))]
    return pd.DataFrame({"customer_id": ids, "contact_id": [f"k{i}" for i in range(len(ids))], "risk": risks,
                         "churn_risk": risks, "retaliation_risk": 0.25, "retaliation_type": "vent",
                         "action": "call back", "reasons": [["waited 1,234 s"] for _ in ids], "agent_id": None,
                         "evidence": [[] for _ in ids]},
                        index=range(len(ids)))


def summary(flagged: pd.DataFrame) -> str:
    facts = [{"item": "contacts scored", "value": 1234}]
    return nightly_summary(SummaryPage(flagged, flagged, pd.DataFrame({"x": []}), facts))


def test_sortable_numbers_carry_their_exact_value_beside_the_text_shown():
    page = table_html([{"n": 1234, "x": 0.123456789, "name": "a"}], sortable=True)
    assert '<td class="n" data-value="1234">1,234</td>' in page
    assert '<td class="n" data-value="0.123456789">0.1235</td>' in page and "<td>a</td>" in page
    assert "data-value" not in table_html([{"n": 1234}])


def test_filterable_tables_count_their_rows():
    page = table_html([{"n": 1}, {"n": 2}], filterable=True)
    assert "data-filter" in page and "2 of 2 shown" in page


@pytest.mark.parametrize("headings, expected", [
    (["Flagged customers", "Flagged customers", "Flagged customers-2"],
     ["flagged-customers", "flagged-customers-2", "flagged-customers-2-2"]),
    (["Is tonight's data like the training data?", "«»", "«»"],
     ["is-tonight-s-data-like-the-training-data", "section", "section-2"]),
])
def test_section_ids_are_slugs_of_their_headings_and_unique(headings, expected):
    assert section_ids(headings) == expected


def test_the_page_opens_with_contents_that_link_to_every_section():
    page = html_report("t", [("Risk", "<p>a</p>"), ("Risk", "<p>b</p>")])
    assert '<a href="#risk">Risk</a>' in page and '<a href="#risk-2">Risk</a>' in page
    assert '<section id="risk"><h2>Risk</h2>' in page and '<section id="risk-2"><h2>Risk</h2>' in page
    assert page.index("<nav") < page.index("<section") and page.count("<script>") == 1


def test_the_summary_lists_every_flagged_customer_sortable_and_filterable_with_ids_unique():
    page = summary(flagged_customers(["C-1", "C-2", "C-3"]))
    assert "3 flagged customers, riskiest first." in page and "3 of 3 shown" in page
    assert all(f"<td>C-{i}</td>" in page for i in (1, 2, 3)) and '<td class="n" data-value="0.9">0.9000</td>' in page
    ids = re.findall(r'\sid="([^"]*)"', page)
    assert "flagged-customers" in ids and len(ids) == len(set(ids))


def test_a_hostile_customer_id_is_text_on_the_page():
    page = summary(flagged_customers([HOSTILE_ID]))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and page.count("<script") == 1


def test_a_quiet_night_says_nobody_was_flagged():
    page = summary(flagged_customers([]))
    assert NOBODY_FLAGGED in page and "<input" not in page


def test_the_page_needs_no_network():
    assert not re.search("https?://", summary(flagged_customers(["C-1"])), re.IGNORECASE)


def test_a_number_written_for_a_reader_sorts_by_its_value():
    page = table_html([{"share": Shown("9%", 0.09)}, {"share": Shown("28% <b>", 0.28)}], sortable=True)
    assert '<td class="n" data-value="0.09">9%</td>' in page
    assert '<td class="n" data-value="0.28">28% &lt;b&gt;</td>' in page
