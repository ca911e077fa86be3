from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tenants.access import GateStatement, gate_register
        from training.access_rules import training_gate, training_gate_decide, training_gate_statement

        gate_register(training_gate, asks=GateStatement(statement=training_gate_statement, decide=training_gate_decide))

        from audit.selectors import compliance_section_register
        from training.selectors import training_compliance_section

        compliance_section_register(training_compliance_section)
