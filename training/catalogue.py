"""The platform's course catalogue: (code, title, provider, validity in months, evidence required). Read by the
data migration and by `services.catalogue_ensure`."""

CATALOGUE = (
    ("hipaa-security-awareness", "HIPAA Security Awareness", "Enclave Academy", 12, True),
    ("hipaa-privacy", "HIPAA Privacy", "Enclave Academy", 12, True),
    ("radiation-safety", "Radiation Safety", "Enclave Academy", 24, True),
    ("device-handling", "Device Handling", "Enclave Academy", 24, False),
    ("break-glass-procedure", "Break-glass Procedure", "Enclave Academy", 12, False),
)
