"""What follows a change: webhooks (API, requests, the dispatcher) and the change history."""
