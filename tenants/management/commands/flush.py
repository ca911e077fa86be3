"""Django's flush (the test runner's emptying of the tables between transactional tests), run as the owner of
the tables: the application's role is granted no TRUNCATE."""

from typing import Any

from django.core.management.commands.flush import Command as DjangoFlush

from tenants.db.roles import as_owner


class Command(DjangoFlush):
    def handle(self, **options: Any) -> Any:
        with as_owner(options["database"]):
            return super().handle(**options)
