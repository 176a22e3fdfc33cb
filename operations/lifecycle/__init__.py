"""The operation lifecycle's statements (`queries`); `operations.services` is
the gateway that performs them."""
