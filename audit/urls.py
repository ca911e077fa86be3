"""Routes of the audit app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

page_patterns: list = []
api_patterns: list = []
