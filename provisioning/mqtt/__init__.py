"""The MQTT Device API (SPEC.md section 8): Murano's `murano:v1/mqtt` over MQTT 3.1.1."""
