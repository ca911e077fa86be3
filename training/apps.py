from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tenants.access import gate_register
        from training.access_rules import training_gate

        gate_register(training_gate)

        from audit.selectors import compliance_section_register
        from training.selectors import training_compliance_section

        compliance_section_register(training_compliance_section)
