from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self) -> None:
        from portal.accounts import signals  # noqa: F401  (connects the sign-in audit receivers)
        from portal.web import schema  # noqa: F401  (registers the OpenAPI description of our authentication)
