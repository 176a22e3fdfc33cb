"""Bank scoping for API views: every bank-scoped endpoint resolves its bank here."""

from __future__ import annotations

import re
from typing import Any

from rest_framework.exceptions import NotFound

from tenancy.auth import access_of
from tenancy.models import BANK_ID_PATTERN, Bank
from tenancy.services import bank_find

BANK_ID_RE = re.compile(BANK_ID_PATTERN)


def bank_not_found(bank_id: str) -> NotFound:
    # One message for "does not exist" and "not yours": nothing to tell apart.
    return NotFound(f"bank '{bank_id}' not found")


class BankScopedMixin:
    """For views under banks/{bank_id}/: `self.bank` is the bank, or 404."""

    kwargs: dict[str, Any]
    request: Any

    def get_bank(self) -> Bank:
        cached: Bank | None = getattr(self, "_bank", None)
        if cached is not None:
            return cached
        bank_id = self.kwargs["bank_id"]
        if not access_of(self.request).can_access(bank_id) or not BANK_ID_RE.match(bank_id):
            raise bank_not_found(bank_id)
        bank = bank_find(bank_id)
        if bank is None:
            raise bank_not_found(bank_id)
        self._bank = bank
        return bank

    def submission_bank_id(self) -> str:
        """For submissions, whose bank is created on first use (as Hindsight
        does): the bank id, in the key's scope (else 404 like any other) and
        valid (else 400). The view checks its body next and creates the bank
        (`bank_ensure`) only then, so a refused body leaves no bank behind."""
        from django.core.exceptions import ValidationError as DjangoValidationError
        from rest_framework.exceptions import ValidationError

        from tenancy.models import bank_id_validator

        bank_id: str = self.kwargs["bank_id"]
        if not access_of(self.request).can_access(bank_id):
            raise bank_not_found(bank_id)
        try:
            bank_id_validator(bank_id)
        except DjangoValidationError as exc:
            raise ValidationError({"bank_id": exc.messages}) from None
        return bank_id
