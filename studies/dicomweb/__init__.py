"""DICOMweb (PS3.18) under /dicomweb/<tenant>/: STOW-RS today; QIDO-RS and WADO-RS in later issues."""
