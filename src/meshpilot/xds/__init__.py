"""The xDS side: debounce, push queue, ACK/NACK rules and the grpc.aio ADS server."""
