"""Searching a bank's units and observations by text.

PostgreSQL: full-text search (`websearch_to_tsquery` over an English
`to_tsvector`, ranked by `ts_rank`). SQLite (the embedded default): a simple
fallback that ranks the most recent units and all observations by how many of
the query's words (stop words aside) they contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.db import connection
from django.db.models import F

from banks.extraction import STOP_WORDS
from banks.models import MemoryUnit, Observation

FALLBACK_SCAN = 2000
_WORD = re.compile(r"[a-z0-9][a-z0-9'_-]*")


@dataclass(frozen=True)
class Hit:
    kind: str  # "observation" or "unit"
    id: str
    text: str
    score: float


def search_bank(*, bank_id: str, query: str, limit: int = 50, tags: list[str] | None = None) -> list[Hit]:
    if connection.vendor == "postgresql":
        hits = _full_text(bank_id, query, limit)
    else:
        hits = _word_overlap(bank_id, query, limit)
    if tags:
        wanted = set(tags)
        tagged = {
            str(pk)
            for pk, unit_tags in MemoryUnit.objects.filter(pk__in=[h.id for h in hits if h.kind == "unit"]).values_list(
                "pk", "tags"
            )
            if wanted & set(unit_tags)
        }
        hits = [h for h in hits if h.kind == "observation" or h.id in tagged]
    return hits[:limit]


def _full_text(bank_id: str, query: str, limit: int) -> list[Hit]:
    search = SearchQuery(query, search_type="websearch", config="english")
    hits: list[Hit] = []
    for model, kind in ((Observation, "observation"), (MemoryUnit, "unit")):
        rows = (
            model.objects.filter(bank_id=bank_id)
            .annotate(search_vector=SearchVector("text", config="english"))
            .filter(search_vector=search)
            .annotate(rank=SearchRank(F("search_vector"), search))
            .order_by("-rank")
            .values_list("pk", "text", "rank")[:limit]
        )
        hits += [Hit(kind, str(pk), text, float(rank)) for pk, text, rank in rows]
    return sorted(hits, key=lambda h: (-h.score, h.kind != "observation"))


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS}


def _word_overlap(bank_id: str, query: str, limit: int) -> list[Hit]:
    wanted = _words(query)
    if not wanted:
        return []
    hits: list[Hit] = []
    observations = Observation.objects.filter(bank_id=bank_id).values_list("pk", "text")
    units = MemoryUnit.objects.filter(bank_id=bank_id).order_by("-created_at").values_list("pk", "text")
    for kind, rows in (("observation", observations), ("unit", units[:FALLBACK_SCAN])):
        for pk, text in rows:
            score = len(wanted & _words(text)) / len(wanted)
            if score > 0:
                hits.append(Hit(kind, str(pk), text, score))
    return sorted(hits, key=lambda h: (-h.score, h.kind != "observation"))[:limit]
