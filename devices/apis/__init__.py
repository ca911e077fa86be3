"""REST API of the devices app: the administrators' register (admin) and the device side (device)."""
