"""Cabinet's outbound mail: rendering, message building, outbox worker, transports."""
