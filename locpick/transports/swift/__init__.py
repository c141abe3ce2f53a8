"""The Swift transport: Glance's three Swift location forms, Swift/Keystone auth, where a token may
go."""
