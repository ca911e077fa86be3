"""Routes of the tenants app: pages under /t/<tenant>/ and API under /api/v1/t/<tenant>/."""

page_patterns: list = []
api_patterns: list = []
