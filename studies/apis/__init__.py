"""REST API of the archive under /api/v1/t/<tenant>/, one module per feature: `shares`, `break_glass`."""
