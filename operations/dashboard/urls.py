"""Mounted under /admin/ (before the admin's own URLs) by opsproject.urls."""

from __future__ import annotations

from django.urls import path

from operations.dashboard import views

urlpatterns = [
    path("dashboard/", views.page, name="ops-dashboard"),
    path("dashboard/panels/", views.panels, name="ops-dashboard-panels"),
    path("dashboard/actions/<slug:name>/", views.action, name="ops-dashboard-action"),
]
