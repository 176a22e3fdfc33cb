"""A bank's memory: documents, their units, entities and what links them,
observations and their sources."""

from __future__ import annotations

import uuid

from django.db import models

from tenancy.models import Bank


class Document(models.Model):
    """A retained source; re-retaining its `document_id` replaces its units."""

    # Found by its unique constraint and recency index (both lead with the
    # bank): a bank index beside them only misleads young statistics.
    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="documents", db_index=False)
    document_id = models.CharField(max_length=512)
    content_hash = models.CharField(max_length=64)
    tags = models.JSONField(default=list, blank=True)
    context = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bank", "document_id"], name="banks_document_unique")]
        indexes = [models.Index(fields=["bank", "-updated_at"], name="banks_document_recent")]

    def __str__(self) -> str:
        return f"{self.bank_id}/{self.document_id}"


class MemoryUnit(models.Model):
    """One fact (a sentence of a retained item), with a sparse vector for similarity."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: the indexes below lead with the bank. Beside them,
    # a bank's own index was the one PostgreSQL chose while a new bank's
    # statistics still said it was nearly empty, and every retain then sorted
    # all of the bank's units to find its nearest and most recent ones.
    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="memory_units", db_index=False)
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="units")
    position = models.PositiveIntegerField(default=0)
    text = models.TextField()
    timestamp = models.DateTimeField()
    tags = models.JSONField(default=list, blank=True)
    context = models.TextField(blank=True, default="")
    # {"<dimension>": weight}: hashed bag of words, L2-normalized (see extraction).
    vector = models.JSONField(default=dict)
    consolidated = models.BooleanField(default=False)
    # Set when a linked neighbour was deleted; graph_maintenance tops links up.
    needs_link_topup = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    entities: models.ManyToManyField[Entity, UnitEntity] = models.ManyToManyField(
        "Entity", through="UnitEntity", related_name="units"
    )

    class Meta:
        indexes = [
            # Temporal neighbours: nearest in time, newest first among equal times.
            models.Index(fields=["bank", "timestamp", "created_at"], name="banks_unit_time"),
            models.Index(fields=["bank", "-created_at"], name="banks_unit_recent"),
            models.Index(fields=["bank"], condition=models.Q(consolidated=False), name="banks_unit_unconsolidated"),
            models.Index(fields=["bank"], condition=models.Q(needs_link_topup=True), name="banks_unit_topup"),
        ]

    def __str__(self) -> str:
        return self.text[:60]


class Entity(models.Model):
    # Found by the unique constraint, which leads with the bank.
    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="entities", db_index=False)
    name = models.CharField(max_length=200)  # canonical: lower-cased, spaces folded
    display_name = models.CharField(max_length=200)
    entity_type = models.CharField(max_length=50, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "entities"
        constraints = [models.UniqueConstraint(fields=["bank", "name"], name="banks_entity_unique")]

    def __str__(self) -> str:
        return self.display_name


class UnitEntity(models.Model):
    # No indexes of their own: the unique constraint leads with the unit, the
    # recency index with the entity. Beside that one, an entity's own index
    # was the one PostgreSQL chose while the statistics were young, reading
    # and sorting every unit of the entity to find its most recent.
    unit = models.ForeignKey(MemoryUnit, on_delete=models.CASCADE, db_index=False)
    entity = models.ForeignKey(Entity, on_delete=models.CASCADE, db_index=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "entity"], name="banks_unit_entity_unique")]
        # An entity's most recently written units (link candidates), without
        # ranking all of them: rows are written with their units, so the id
        # orders them by recency.
        indexes = [models.Index(fields=["entity", "-id"], name="banks_entity_recent_units")]


class EntityCooccurrence(models.Model):
    """How many units mention both entities (entity_a.id < entity_b.id)."""

    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="cooccurrences")
    entity_a = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="+")
    entity_b = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="+")
    count = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entity_a", "entity_b"], name="banks_cooccurrence_unique")]


class EntityCooccurrenceDelta(models.Model):
    """A change to a co-occurrence count not yet folded into `EntityCooccurrence`.

    Retains append these instead of updating the shared count rows, so that
    many retains into one bank never queue on the same row; `memory.fold`
    adds them up into the counts at the end of each retain and before any
    delete or prune (`memory.cooccurrence_counts` reads both)."""

    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="+")
    entity_a = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="+")
    entity_b = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="+")
    count = models.IntegerField()


class LinkKind(models.TextChoices):
    TEMPORAL = "temporal", "Temporal"
    SEMANTIC = "semantic", "Semantic"


class MemoryLink(models.Model):
    """A directed link between two units of a bank (`banks.links`).

    A retain writes a few hundred per item, so each row pays only for what
    queries need: no index on the bank (a bank's links are found through its
    units, and go with them when it is deleted), no index on the source (the
    unique index's prefix), and no database-level foreign keys, whose checks
    at commit cost three row lookups and locks per link. The write protocol
    keeps the references instead (`banks.write_locks`): links are written by
    adders, who check their targets exist in the same transaction as no
    delete can run beside them; deletes remove a unit's links with it."""

    bank = models.ForeignKey(
        Bank, on_delete=models.DO_NOTHING, related_name="links", db_index=False, db_constraint=False
    )
    source = models.ForeignKey(
        MemoryUnit, on_delete=models.CASCADE, related_name="links_out", db_index=False, db_constraint=False
    )
    target = models.ForeignKey(MemoryUnit, on_delete=models.CASCADE, related_name="links_in", db_constraint=False)
    kind = models.CharField(max_length=16, choices=LinkKind.choices)
    weight = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "target", "kind"], name="banks_link_unique")]


class PendingBackLink(models.Model):
    """A link a retain wrote whose target has not yet been offered a link back
    to its source: `memory.fold` does that, one writer per bank at a time, in
    the order the links were written, then deletes the row. A narrow queue of
    its own, so a link row is written once (not written, then updated)."""

    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False)
    source_id = models.UUIDField()
    target_id = models.UUIDField()
    kind = models.CharField(max_length=16, choices=LinkKind.choices)
    weight = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["bank", "id"], name="banks_pending_back_bank")]


class FullLinks(models.Model):
    """A unit whose links of one kind have reached their cap (`links.CAPS`).

    Known full, a unit is neither offered nor counted for a link back again:
    a retain's links go to recent units that are mostly full already, and
    counting their links at every offer was half the database time of a
    retain. Only the bank's folder adds rows (`links.back_links`); a delete
    removes those of the units that lose a link (`memory._delete_units`), so
    a row always means full, while no row means only "not known full"."""

    unit = models.ForeignKey(
        MemoryUnit, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    kind = models.CharField(max_length=16, choices=LinkKind.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "kind"], name="banks_full_links_unique")]


class Observation(models.Model):
    """What the bank knows about one entity, consolidated from its units.

    `sources` are the units its text was built from. Deleting one of them
    makes the observation stale (`needs_rebuild`), in the deleting
    transaction; the next consolidation rebuilds it from the units that
    survive, or removes it when none do.
    """

    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="observations")
    entity = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="observations")
    text = models.TextField()
    unit_count = models.PositiveIntegerField(default=0)
    sources = models.ManyToManyField(MemoryUnit, through="ObservationSource", related_name="observations", blank=True)
    needs_rebuild = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bank", "entity"], name="banks_observation_unique")]
        indexes = [
            models.Index(fields=["bank"], condition=models.Q(needs_rebuild=True), name="banks_observation_stale"),
        ]


class ObservationSource(models.Model):
    """One unit an observation cites."""

    observation = models.ForeignKey(Observation, on_delete=models.CASCADE)
    unit = models.ForeignKey(MemoryUnit, on_delete=models.CASCADE)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["observation", "unit"], name="banks_observation_source_unique")]
