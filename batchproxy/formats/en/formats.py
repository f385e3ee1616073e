"""Dates and times as an operator compares them: to the second, year first, in UTC (TIME_ZONE).

Django's English default ("Dec. 5, 2026, 1:28 p.m.") hides the seconds that tell a flush from
the poll after it. Found through FORMAT_MODULE_PATH (settings.py).
"""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
