"""What a bank holds, one module per concern: its memory, mental models,
uploaded files and webhooks. The bank itself is `tenancy.Bank`."""

from __future__ import annotations

from banks.models.files import StoredFile
from banks.models.memory import (
    Document,
    Entity,
    EntityCooccurrence,
    EntityCooccurrenceDelta,
    FullLinks,
    LinkKind,
    MemoryLink,
    MemoryUnit,
    Observation,
    ObservationSource,
    PendingBackLink,
    UnitEntity,
)
from banks.models.mental_models import MentalModel
from banks.models.webhooks import DeliveryOutcome, Webhook, WebhookDelivery, WebhookEvent

__all__ = [
    "DeliveryOutcome",
    "Document",
    "Entity",
    "EntityCooccurrence",
    "EntityCooccurrenceDelta",
    "FullLinks",
    "LinkKind",
    "MemoryLink",
    "MemoryUnit",
    "MentalModel",
    "Observation",
    "ObservationSource",
    "PendingBackLink",
    "StoredFile",
    "UnitEntity",
    "Webhook",
    "WebhookDelivery",
    "WebhookEvent",
]
