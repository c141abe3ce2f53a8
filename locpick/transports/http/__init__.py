"""The http(s) transport: probes, ranged GETs with redirects followed by hand, byte streams."""
