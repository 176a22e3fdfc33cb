#!/bin/sh
# Apply migrations first when asked (the web service does), then run the command.
set -e
if [ "${OPS_MIGRATE_ON_START:-0}" = "1" ]; then
    python manage.py migrate --noinput
fi
exec "$@"
