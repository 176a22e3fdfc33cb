"""Banks (the tenants) and the API keys that reach them. The tables keep the
names they had in the banks app (`banks_bank`, `banks_apikey`)."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

BANK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
bank_id_validator = RegexValidator(
    BANK_ID_PATTERN,
    "A bank id is 1-128 characters: letters, digits, '_', '.', ':' or '-', starting with a letter or digit.",
)


def default_disposition() -> dict[str, int]:
    """Hindsight's disposition traits (each 1-5); 3 is neutral."""
    return {"skepticism": 3, "literalism": 3, "empathy": 3}


class Bank(models.Model):
    """A tenant: every operation, document and memory belongs to one bank."""

    bank_id = models.CharField(primary_key=True, max_length=128, validators=[bank_id_validator])
    name = models.CharField(max_length=200, blank=True, default="")
    mission = models.TextField(blank=True, default="")
    background = models.TextField(blank=True, default="")
    # Kept and returned for Hindsight clients (its bank profile requires it);
    # the rule-based extractor does not use it.
    disposition = models.JSONField(default=default_disposition, blank=True)
    enable_observations = models.BooleanField(default=True)
    enable_auto_consolidation = models.BooleanField(default=False)
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "banks_bank"
        ordering = ["bank_id"]

    def __str__(self) -> str:
        return self.bank_id


class ApiKey(models.Model):
    """A REST API credential. Only a SHA-256 hash of the key is stored.

    Keys are 256-bit random tokens, so a fast hash is enough: there is nothing to
    brute-force. `prefix` (the first characters) finds the row and names the key
    in the admin without revealing it.
    """

    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    is_admin = models.BooleanField(default=False)
    # Bank ids this key may reach (ignored for admin keys). Ids, not foreign
    # keys: a key may be issued for a bank before the bank is first used.
    bank_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "banks_apikey"
        verbose_name = "API key"

    def __str__(self) -> str:
        scope = "admin" if self.is_admin else ",".join(self.bank_ids)
        return f"{self.prefix}… ({scope})"

    def can_access(self, bank_id: str) -> bool:
        return self.is_admin or bank_id in self.bank_ids
