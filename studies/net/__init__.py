"""The archive's network doors that are not HTTP: the DICOM listener (`scp`)."""
