"""The live operations dashboard: a staff-only admin page whose panels are
server-rendered partials that htmx refreshes every few seconds."""
