"""Generated gRPC stubs (private): regenerate with `python -m replay._proto.generate`."""
