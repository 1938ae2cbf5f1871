"""Every hostile case of docs/reliability.md: the project's error with the expected words
(or a clean run where the input is valid), and the page lists exactly these cases."""
import os
import re

import pytest

from hostile_cases import CASES, DOC, run


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(case, monkeypatch):
    if case.root_skips and os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    monkeypatch.setenv("ECMT_COMPILE", "0")
    outcome = run(case)
    assert outcome.status == case.status, outcome.message
    assert case.expect in outcome.message
    assert "Traceback" not in outcome.message


def test_the_page_lists_every_case_and_only_them():
    listed = re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), flags=re.M)
    assert len({c.id for c in CASES}) == len(CASES)
    assert sorted(listed) == sorted(c.id for c in CASES), "regenerate it: python tests/hostile_cases.py"
