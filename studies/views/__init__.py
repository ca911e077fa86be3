"""Pages of the archive under /t/<tenant>/, one module per feature: `studies` (the study list and series
thumbnails), `study` (a study's page and its access history), `ingest` (the upload door and the ingest
activity), `shares`, `break_glass` and `exports`. `common` holds what they share."""
