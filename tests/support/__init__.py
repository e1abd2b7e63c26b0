"""What the tests share: factories, helpers, the service probe and the process runner."""
