"""Turning text into facts, entities and vectors: a small, replaceable interface.

No language model runs here, so the built-in `RuleBasedExtractor` is
deterministic and documented:

- **facts**: the text split into sentences (after `.`, `!`, `?` or a line break),
  whitespace folded, fragments under 3 characters dropped;
- **entities**: runs of capitalised words ("Ada Lovelace", "Acme Corp"), minus a
  sentence's first word when it is a common word ("The", "She", …), plus
  @handles and #tags; types are guessed only for handles (`person`) and tags
  (`topic`);
- **vectors**: a hashed bag of words (lower-cased word tokens and word bigrams,
  stop words removed, each hashed with BLAKE2 into 1,024 signed dimensions,
  then L2-normalised), stored sparsely. Cosine similarity of two vectors is the
  dot product. It needs no model and no training, and ranks texts sharing rare
  words and phrases together; it knows nothing of synonyms.

A deployment with a real model sets `OPS_EXTRACTOR` to the dotted path of a
class with the same three methods (see `Extractor`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

Vector = dict[str, float]


@dataclass(frozen=True)
class EntityMention:
    name: str
    entity_type: str = ""


class Extractor(Protocol):
    def extract_facts(self, text: str) -> list[str]: ...

    def extract_entities(self, text: str) -> list[EntityMention]: ...

    def embed(self, text: str) -> Vector: ...


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CAPITALISED_RUN = re.compile(r"\b[A-Z][\w'&.-]*(?:\s+(?:of|de|van|von|the|and|&)?\s*[A-Z][\w'&.-]*)*")
_HANDLE = re.compile(r"(?<![\w@])@(\w{2,})")
_HASHTAG = re.compile(r"(?<![\w#])#(\w{2,})")
_WORD = re.compile(r"[a-z0-9][a-z0-9'_-]*")
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "hers",
        "him",
        "his",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "too",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
    ]
)
_SENTENCE_STARTERS = frozenset(
    [
        "the",
        "a",
        "an",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "he",
        "she",
        "they",
        "we",
        "i",
        "you",
        "my",
        "our",
        "their",
        "his",
        "her",
        "there",
        "here",
        "when",
        "while",
        "after",
        "before",
        "then",
        "so",
        "but",
        "and",
        "or",
        "if",
        "yesterday",
        "today",
        "tomorrow",
        "also",
        "however",
    ]
)
DIMENSIONS = 1024


class RuleBasedExtractor:
    def extract_facts(self, text: str) -> list[str]:
        facts = []
        for sentence in _SENTENCE_END.split(text):
            folded = " ".join(sentence.split())
            if len(folded) >= 3:
                facts.append(folded)
        return facts

    def extract_entities(self, text: str) -> list[EntityMention]:
        found: dict[str, EntityMention] = {}
        for sentence in _SENTENCE_END.split(text):
            for match in _CAPITALISED_RUN.finditer(sentence):
                words = match.group(0).rstrip(".").split()
                if match.start() == len(sentence) - len(sentence.lstrip()) and words[0].lower() in _SENTENCE_STARTERS:
                    words = words[1:]
                name = " ".join(words).strip(" '&-")
                if len(name) >= 2 and name.lower() not in _SENTENCE_STARTERS:
                    found.setdefault(canonical(name), EntityMention(name))
        for handle in _HANDLE.findall(text):
            found.setdefault(canonical(handle), EntityMention(handle, "person"))
        for tag in _HASHTAG.findall(text):
            found.setdefault(canonical(tag), EntityMention(tag, "topic"))
        return list(found.values())

    def embed(self, text: str) -> Vector:
        tokens = [t for t in _WORD.findall(text.lower()) if t not in STOP_WORDS]
        features = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
        vector: dict[int, float] = {}
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % DIMENSIONS
            sign = 1.0 if digest[4] & 1 else -1.0
            vector[index] = vector.get(index, 0.0) + sign
        norm = math.sqrt(sum(v * v for v in vector.values()))
        if norm == 0:
            return {}
        return {str(i): round(v / norm, 6) for i, v in vector.items() if v}


def canonical(name: str) -> str:
    """The key an entity is stored under: case and spacing do not matter."""
    return " ".join(name.lower().split())[:200]


def cosine(a: Vector, b: Vector) -> float:
    # The shared dimensions first (a set intersection, in C): two short texts
    # share few, so the Python loop is over a handful instead of every entry.
    return sum(a[index] * b[index] for index in a.keys() & b.keys())


@cache
def _extractor(path: str) -> Extractor:
    extractor: Extractor = import_string(path)()
    return extractor


def get_extractor() -> Extractor:
    return _extractor(settings.OPS_EXTRACTOR)
