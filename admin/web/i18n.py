"""The settings page's languages: Dutch by default, English and French, chosen by `?lang=` or the browser.

The texts live in `locales/<lang>.json`, one flat object of `str.format` templates per language, with
the same keys in each (a test holds them to it). An input error from `admin.inputs` carries a code
and its values, and is said with `input.<code>`. Other messages and diagnoses that come from the admin
services stay in English, as the CLI prints them; the page puts a translated lead-in before them and
marks them `lang="en"` so a screen reader pronounces them right.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

LANGUAGES = ("nl", "en", "fr")
DEFAULT_LANGUAGE = "nl"
LANGUAGE_NAMES = {"nl": "Nederlands", "en": "English", "fr": "Français"}


@cache
def texts(lang: str) -> dict[str, str]:
    """Every text of one language, read once from the package."""
    source = resources.files("admin.web").joinpath("locales", f"{lang}.json")
    data = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"locales/{lang}.json must be one object of strings")
    return {str(key): str(value) for key, value in data.items()}


class Translator:
    """`t("key", field=value)`: the text in this language with its fields filled in."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._texts = texts(lang)

    def __call__(self, key: str, **fields: object) -> str:
        text = self._texts[key]
        return text.format(**fields) if fields else text

    def has(self, key: str) -> bool:
        return key in self._texts


def _ranked(accept_language: str) -> list[str]:
    """The primary language tags of an Accept-Language header, best first (RFC 9110 12.5.4)."""
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate(accept_language.split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, index, tag.strip().lower().split("-")[0]))
    return [tag for _, _, tag in sorted(ranked)]


def negotiate(asked: str | None, accept_language: str | None) -> tuple[str, bool]:
    """The page's language and whether it was asked for explicitly (`?lang=`, kept in links then).

    `?lang=` wins when it names one of ours; then the browser's first language that is one of ours;
    otherwise Dutch, also when the browser names none of the three.
    """
    if asked in LANGUAGES:
        return str(asked), True
    for tag in _ranked(accept_language or ""):
        if tag in LANGUAGES:
            return tag, False
    return DEFAULT_LANGUAGE, False
