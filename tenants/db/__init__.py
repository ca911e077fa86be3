"""Enclave's PostgreSQL backend (settings ENGINE "tenants.db"): Django's, carrying the tenant scope to the database.

See `tenants.db.base` and `tenants.db.rowsecurity` (issue 14, row-level security).
"""
