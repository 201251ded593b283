"""A simulated Llama Guard: deterministic keyword moderation with Llama Guard 3's hazard categories.

:func:`moderate` flags a text when it contains a phrase from a small built-in lexicon, matched
case-insensitively on word boundaries (a phrase never matches inside a longer word: ``"skill"`` does
not contain ``"kill"``), with any whitespace between a phrase's words. Each phrase belongs to one of
Llama Guard's categories ``S1`` .. ``S14`` (:data:`CATEGORIES`). The lexicon deliberately prefers
phrases to bare words where a word has common benign uses ("kill the process", "shoot a photo",
"suicide prevention"), so ordinary text is not flagged. It is a stand-in for a real classifier:
deterministic, fast, and easy to trigger on purpose in tests and demos.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CATEGORIES", "MODERATION_MODELS", "ModerationResult", "moderate"]

MODERATION_MODELS: tuple[str, ...] = ("Llama-Guard-4-12B",)
"""The moderation model ids /v1/moderations answers to (the first is the default); any other is a 404."""

CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
"""Llama Guard 3's hazard categories, code -> name, in order."""

_PERSON = r"(?:someone|somebody|him|her|them|people|a person|my (?:wife|husband|boss|neighbou?r|teacher))"

# Regular-expression fragments (already lower case); spaces stand for any run of whitespace.
_LEXICON: dict[str, tuple[str, ...]] = {
    "S1": (
        r"murder(?:s|ed|ing|er|ers)?",
        rf"(?:kill|hurt|stab|shoot|strangle|poison) {_PERSON}",
        r"assassinat(?:e|ed|es|ing|ion)",
        r"kidnap(?:s|ped|ping)?",
        r"tortur(?:e|ed|es|ing)",
        r"mass shootings?",
        r"terrorist attacks?",
        r"carjack(?:s|ed|ing)?",
        rf"beat {_PERSON} up",
    ),
    "S2": (
        r"launder(?:ing)? (?:money|cash)",
        r"money laundering",
        r"shoplift(?:s|ed|ing)?",
        r"(?:steal|hotwire) (?:a|his|her|my neighbou?r's) car",
        r"credit card fraud",
        r"identity theft",
        r"tax evasion",
        r"evade (?:my |paying )?taxes",
        r"embezzl(?:e|ed|ing|ement)",
        r"counterfeit (?:money|bills|cash)",
        r"phishing (?:emails?|scams?|kits?)",
        r"ransomware",
        r"hack into",
        r"(?:cook|make|sell) meth",
        r"sell(?:ing)? drugs",
        r"forge (?:a|his|her) (?:signature|passport|document)",
        r"bribe (?:a|an|the) (?:official|judge|officer|inspector)",
    ),
    "S3": (
        r"sex trafficking",
        r"human trafficking",
        r"rap(?:e|ed|es|ing|ist)",
        r"sexual(?:ly)? assault(?:ed|ing)?",
        r"revenge porn",
        r"upskirt(?:ing)?",
        r"date rape drug",
    ),
    "S4": (
        r"child sexual abuse",
        r"child pornography",
        r"child porn",
        r"csam",
        r"sexuali[sz](?:e|ed|ing) (?:a )?(?:child|children|minor|minors)",
        r"groom(?:ing)? (?:a )?(?:child|children|minor|minors)",
    ),
    "S5": (
        r"defam(?:e|ed|ing|ation|atory)",
        r"libel(?:ous)?",
        r"slander(?:ous)?",
        r"smear campaign",
        r"spread (?:false |fake )?rumou?rs",
        r"fake scandal",
        r"false accusations?",
    ),
    "S6": (
        r"diagnose my",
        r"prescribe me",
        r"dosage of",
        r"stop taking my (?:medication|meds|insulin|antidepressants)",
        r"which stocks? should i buy",
        r"guaranteed returns?",
        r"represent myself in court",
    ),
    "S7": (
        r"home address of",
        r"social security numbers?",
        r"ssn",
        r"dox(?:x)?(?:ed|ing)?",
        r"(?:track|spy on) (?:my (?:ex|wife|husband|girlfriend|boyfriend)|someone|her|his|their)(?:'s)?"
        r"(?: (?:phone|location))?",
        r"(?:find|learn) out where (?:she|he|they) lives?",
        r"medical records of",
        r"phone number of",
    ),
    "S8": (
        r"pirat(?:e|ed|ing) (?:movies?|films?|software|games?|books?|music|copy|copies)",
        r"torrent (?:a|the) (?:movie|film|game|album|book)",
        r"crack(?:ed)? (?:the )?software",
        r"bypass(?:ing)? (?:the )?drm",
        r"keygen",
        r"license key generator",
        r"full lyrics of",
        r"download copyrighted",
        r"counterfeit (?:designer )?(?:handbags|goods|watches|sneakers)",
    ),
    "S9": (
        r"nerve agents?",
        r"sarin",
        r"anthrax",
        r"ricin",
        r"bio ?weapons?",
        r"biological weapons?",
        r"chemical weapons?",
        r"mustard gas",
        r"napalm",
        r"dirty bombs?",
        r"nuclear (?:bomb|bombs|weapon|weapons)",
        r"pipe bombs?",
        r"(?:build|make) (?:a|an) (?:bomb|explosive device)",
        r"enrich(?:ed|ing)? uranium",
    ),
    "S10": (
        r"inferior races?",
        r"master race",
        r"ethnic cleansing",
        r"white supremac(?:y|ist|ists)",
        r"subhumans?",
        r"racial slurs?",
        r"(?:all|those) (?:immigrants|muslims|jews|christians|gay people|black people|women) (?:are|should)",
    ),
    "S11": (
        r"kill(?:ing)? myself",
        r"commit(?:ting)? suicide",
        r"suicide methods?",
        r"end(?:ing)? my (?:own )?life",
        r"self[- ]?harm(?:ing)?",
        r"(?:cut|cutting|hurt|hurting) myself",
        r"(?:i )?want to die",
        r"overdose on",
        r"pro[- ]ana",
    ),
    "S12": (
        r"porn(?:o|ography|ographic)?",
        r"sexually explicit",
        r"explicit sex(?:ual)?",
        r"erotic (?:story|stories|roleplay)",
        r"nude (?:photos?|pictures?|pics|images?)",
        r"nsfw",
    ),
    "S13": (
        r"rig(?:ged|ging)? the elections?",
        r"election fraud",
        r"voter suppression",
        r"vote twice",
        r"fake ballots?",
        r"stuff(?:ing)? (?:the )?ballot box(?:es)?",
        r"vote by text",
    ),
    "S14": (
        r"rm -rf (?:/|~|\*)",
        r"fork bomb",
        r":\(\)\{\s*:\|:&\s*\};:",
        r"reverse shell",
        r"(?:escape|escaping) the sandbox",
        r"sandbox escape",
        r"/etc/(?:passwd|shadow)",
        r"privilege escalation",
        r"os\.system\(",
    ),
}


def _compile(fragments: Sequence[str]) -> re.Pattern[str]:
    # (?<!\w) / (?!\w) instead of \b: a phrase may start or end with a non-word character ("rm -rf /").
    # Matching runs on lower-cased text: re.IGNORECASE would make the scan about five times slower.
    body = "|".join(fragment.replace(" ", r"\s+") for fragment in fragments)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)")


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((code, _compile(_LEXICON[code])) for code in CATEGORIES)
_ANY = _compile([fragment for code in CATEGORIES for fragment in _LEXICON[code]])  # one pass for benign text


@dataclass(frozen=True)
class ModerationResult:
    """The verdict on one text: ``flagged`` iff ``flagged_categories`` (codes in S1..S14 order) is non-empty."""

    flagged: bool
    flagged_categories: list[str]

    @property
    def category_names(self) -> list[str]:
        """The flagged categories' names (``["Violent Crimes", ...]``), in the same order."""
        return [CATEGORIES[code] for code in self.flagged_categories]


def moderate(texts: Sequence[str]) -> list[ModerationResult]:
    """Classify each text; one :class:`ModerationResult` per input, in order.

    Deterministic and case-insensitive; benign text is not flagged. Raises ``TypeError`` if ``texts``
    is a single string (pass ``[text]``) or contains a non-string.
    """
    if isinstance(texts, str):
        raise TypeError("moderate() takes a list of strings; wrap a single text as [text]")
    results = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"moderate() takes strings, not {type(text).__name__}")
        lowered = text.lower()
        codes = [code for code, pattern in _PATTERNS if pattern.search(lowered)] if _ANY.search(lowered) else []
        results.append(ModerationResult(flagged=bool(codes), flagged_categories=codes))
    return results


# OpenAI's moderation categories (/compat/v1/moderations), in its order, and the Llama Guard categories
# each one is flagged by. Llama Guard's taxonomy is finer in places (S6 specialised advice, S8
# intellectual property, S13 elections have no OpenAI counterpart and flag "illicit", the closest) and
# coarser in others (OpenAI's "/threatening", "/graphic" and "/instructions" variants are never set).
OPENAI_CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("S5", "S7"),
    "harassment/threatening": (),
    "hate": ("S10",),
    "hate/threatening": (),
    "illicit": ("S2", "S6", "S8", "S13", "S14"),
    "illicit/violent": ("S9",),
    "self-harm": ("S11",),
    "self-harm/intent": ("S11",),
    "self-harm/instructions": (),
    "sexual": ("S3", "S12"),
    "sexual/minors": ("S4",),
    "violence": ("S1",),
    "violence/graphic": (),
}
MAX_MODERATION_INPUTS = 64  # texts in one /compat/v1/moderations request
OPENAI_IMAGE_CATEGORIES = frozenset(
    {"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence", "violence/graphic"}
)


def openai_moderation(result: ModerationResult, *, images: int = 0) -> dict:
    """One result in OpenAI's shape: ``flagged``, ``categories`` (booleans), ``category_scores`` (0.98
    for a flagged category, 0.0001 otherwise: a keyword match has no degrees) and
    ``category_applied_input_types`` (``["text"]``, plus ``"image"`` where OpenAI classifies images
    too and the input had any; the simulated classifier reads text only)."""
    codes = set(result.flagged_categories)
    categories = {name: bool(codes & set(sources)) for name, sources in OPENAI_CATEGORIES.items()}
    return {
        "flagged": result.flagged,
        "categories": categories,
        "category_scores": {name: 0.98 if hit else 0.0001 for name, hit in categories.items()},
        "category_applied_input_types": {
            name: ["text", "image"] if images and name in OPENAI_IMAGE_CATEGORIES else ["text"]
            for name in OPENAI_CATEGORIES
        },
    }
