"""Date formats for English: times to the second, since operations start and
finish within seconds of each other (Django's own stop at the minute)."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
