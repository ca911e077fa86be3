from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from studies.access_rules import study_visibility
        from studies.models import Study
        from tenants.access import visibility_rule_register

        visibility_rule_register(Study, study_visibility)
