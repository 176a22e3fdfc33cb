"""The API keys' admin pages: a key is shown once, on creation, and revoked
(never deleted: the log keeps who used what). The banks' pages are the banks
app's (they count each bank's operations)."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin import FullWidthList
from tenancy.api_keys import api_key_create, api_key_revoke
from tenancy.models import ApiKey, bank_id_validator


class ApiKeyCreationForm(forms.ModelForm):  # type: ignore[type-arg]
    """The add form: a name and the key's reach; the key itself is generated."""

    bank_ids_text = forms.CharField(
        label="Banks",
        required=False,
        help_text="Bank ids this key may reach, separated by commas or spaces (ignored for an admin key).",
    )

    class Meta:
        model = ApiKey
        fields = ("name", "is_admin")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        raw = data.get("bank_ids_text") or ""
        bank_ids = sorted({part for part in raw.replace(",", " ").split() if part})
        for bank_id in bank_ids:
            try:
                bank_id_validator(bank_id)
            except ValidationError as exc:
                raise ValidationError({"bank_ids_text": f"{bank_id!r}: {exc.messages[0]}"}) from None
        if not data.get("is_admin") and not bank_ids:
            raise ValidationError({"bank_ids_text": "Name at least one bank, or make it an admin key."})
        data["bank_ids"] = bank_ids
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(FullWidthList, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("prefix_display", "name", "is_admin", "banks", "created_at", "last_used_at", "state")
    list_filter = ("is_admin", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix")
    actions = ["revoke_keys"]
    readonly_fields = ("prefix", "is_admin", "bank_ids", "created_at", "last_used_at", "revoked_at")
    fields = ("name", "prefix", "is_admin", "bank_ids", "created_at", "last_used_at", "revoked_at")

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyCreationForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return ("name", "is_admin", "bank_ids_text") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)  # only the name is editable
            return
        key, raw = api_key_create(
            name=form.cleaned_data.get("name") or "",
            admin=bool(form.cleaned_data.get("is_admin")),
            bank_ids=form.cleaned_data["bank_ids"],
        )
        obj.pk, obj.prefix, obj.key_hash, obj.bank_ids = key.pk, key.prefix, key.key_hash, key.bank_ids
        obj.created_at = key.created_at
        obj._state.adding = False
        # Kept on the instance for the response below only: never stored, never in a message cookie.
        obj._raw_key = raw  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "key": obj,
            "raw_key": getattr(obj, "_raw_key", ""),
            "opts": self.opts,
            "changelist_url": reverse("admin:tenancy_apikey_changelist"),
        }
        return TemplateResponse(request, "admin/tenancy/apikey/created.html", context)

    @admin.display(description="key")
    def prefix_display(self, obj: ApiKey) -> SafeString:
        return format_html('<span class="ops-id">{}…</span>', obj.prefix)

    @admin.display(description="banks")
    def banks(self, obj: ApiKey) -> str:
        return "(every bank)" if obj.is_admin else ", ".join(obj.bank_ids)

    @admin.display(description="state", ordering="revoked_at")
    def state(self, obj: ApiKey) -> SafeString:
        if obj.revoked_at:
            return format_html('<span class="ops-badge ops-cancelled" title="{}">revoked</span>', obj.revoked_at)
        return format_html('<span class="ops-badge ops-completed">{}</span>', "live")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset:
            if api_key_revoke(key_id=key.pk):
                revoked += 1
                LogEntry.objects.log_actions(
                    user_id=cast(int, request.user.pk),
                    queryset=[key],
                    action_flag=CHANGE,
                    change_message="Revoked from the admin console",
                    single_object=True,
                )
        skipped = queryset.count() - revoked
        text = f"Revoked {revoked} key{'' if revoked == 1 else 's'}."
        if skipped:
            text += f" {skipped} already revoked."
        self.message_user(request, text, messages.SUCCESS if revoked else messages.WARNING)

    class Media:
        css = {"all": ["operations/console.css"]}


# --- mental models -----------------------------------------------------------------
