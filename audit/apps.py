from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.models import LogEntry
        from django.db.models.signals import post_save

        from audit.incidents import security_alert_mail
        from audit.services import logentry_seal_on_commit, security_alert_hook_register

        post_save.connect(logentry_seal_on_commit, sender=LogEntry, dispatch_uid="audit.logentry_seal")
        security_alert_hook_register(security_alert_mail)
