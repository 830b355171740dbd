"""A route's `match_key` (issue 18): one kind of key, refused with its key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import config
from bridge.config import MatchKeyConfig
from tests.unit.test_config import GOOD, error_of, write


@pytest.mark.parametrize(
    ("line", "loaded"),
    [
        ('{tag: "ext:"}', MatchKeyConfig(tag="ext:")),
        ("{url: true}", MatchKeyConfig(url=True)),
        (
            r"{title_regex: '\[([A-Z]+-\d+)\]', only: true}",
            MatchKeyConfig(title_regex=r"\[([A-Z]+-\d+)\]", only=True),
        ),
        ("null", None),
    ],
)
def test_a_match_key_loads(tmp_path: Path, line: str, loaded: MatchKeyConfig | None) -> None:
    cfg = config.load(write(tmp_path, GOOD + f"    match_key: {line}\n"), env={"IMP_TOKEN": "x"})
    assert cfg.routes[0].match_key == loaded


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{}", "routes[0].match_key: choose one key: tag: PREFIX, url: true or title_regex: REGEX"),
        ("{url: false}", "routes[0].match_key: choose one key: tag: PREFIX, url: true or title_regex: REGEX"),
        (
            '{tag: "ext:", url: true}',
            "routes[0].match_key: choose one key: tag: PREFIX, url: true or title_regex: REGEX "
            "(not tag and url together)",
        ),
        (
            '{tag: " "}',
            'routes[0].match_key.tag: empty: give the prefix of the tags holding the key, e.g. "ext:"',
        ),
        (
            "{title_regex: '(a)(b)'}",
            "routes[0].match_key.title_regex: '(a)(b)' has 2 groups: capture the key in one group "
            "(or none: the whole match)",
        ),
        (
            "{title_regex: '[x'}",
            "routes[0].match_key.title_regex: '[x' is not a regular expression "
            "(unterminated character set at position 0)",
        ),
        (
            '"ext:"',
            "routes[0].match_key: 'ext:' is not a mapping: use one of tag: PREFIX, url: true or "
            'title_regex: REGEX, e.g. {tag: "ext:"}',
        ),
        (
            "{title_regex: '[A-Z]*'}",
            "routes[0].match_key.title_regex: '[A-Z]*' matches where there is no text at all: a key is "
            "one character or more",
        ),
        ("{slug: x}", "routes[0].match_key.slug: unknown key"),
    ],
)
def test_a_bad_match_key_names_its_key_and_line(tmp_path: Path, line: str, message: str) -> None:
    assert error_of(tmp_path, GOOD + f"    match_key: {line}\n") == f"{tmp_path}/cfg.yaml:18: {message}"
